"""Training: pure step functions and the epoch loop around them (big_vision style).

`train_step` / `eval_step` are module-level pure functions of (state, batch, rng, ...);
static pieces (model, optimizer, partition labels, degradation config) are bound with
`functools.partial`, the device axis by `brainjax.parallel` (the only pmap user). Each
step's randomness is `fold_in(rng, state.step)`, per-example degradation keys come from the
example's global index, so a run is reproducible from its seed and a resumed run replays
exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

from brainjax.errors import UserError

import functools
import json
import logging
import math
import os
import time
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from brainjax import checkpoint, degrade, models, parallel, partition

log = logging.getLogger("brainjax")


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    batch_stats: Any  # {} for models without BatchNorm
    opt_state: Any
    lr_scale: jax.Array  # float32 scalar, lowered by reduce-on-plateau


def _global_indices(n: int, axis_name: str | None) -> jax.Array:
    """Global example index of each row of this device's batch."""
    offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * n
    return offset + jnp.arange(n)


def model_variables(params: Any, batch_stats: Any) -> dict:
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def to_float_images(images: jax.Array) -> jax.Array:
    """uint8 [N, H, W, 1] from the pipeline -> float32 in [0, 1] (on device)."""
    return images.astype(jnp.float32) / 255.0


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def train_step(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array, *, model: Any,
               tx: optax.GradientTransformation, label_tree: Any, degrade_cfg: Mapping,
               label_smoothing: float = 0.0, axis_name: str | None = None) -> tuple[TrainState, dict]:
    """One optimizer step on one (per-device) batch; returns summed metrics.

    Only the trainable subtree is differentiated: the frozen base enters the loss as a
    constant, so XLA builds no backward pass through it. BatchNorm statistics are
    averaged over devices when the base trains them.
    """
    step_rng = jax.random.fold_in(rng, state.step)
    degrade_rng, dropout_rng = jax.random.split(step_rng)
    labels = batch["label"]
    n = labels.shape[0]
    images = to_float_images(batch["image"])
    images = degrade.augment(images, degrade.example_keys(degrade_rng, _global_indices(n, axis_name)), degrade_cfg)
    if axis_name is not None:
        dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(axis_name))

    trainable, frozen = partition.split(state.params, label_tree)

    def loss_fn(trainable_params):
        params = partition.merge(trainable_params, jax.lax.stop_gradient(frozen))
        logits, new_vars = model.apply(model_variables(params, state.batch_stats), images, train=True,
                                       rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
        loss = cross_entropy(logits, labels, label_smoothing).mean()
        return loss, (logits, new_vars.get("batch_stats", state.batch_stats))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        batch_stats = jax.lax.pmean(batch_stats, axis_name)
    full_grads = partition.merge(grads, jax.tree.map(jnp.zeros_like, frozen))
    updates, opt_state = tx.update(full_grads, state.opt_state, state.params)
    trainable_updates, _ = partition.split(updates, label_tree)
    trainable_updates = jax.tree.map(lambda u: u * state.lr_scale, trainable_updates)
    params = partition.merge(optax.apply_updates(trainable, trainable_updates), frozen)

    metrics = {
        "loss_sum": loss * n,
        "correct": jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32),
        "count": jnp.asarray(n, jnp.float32),
    }
    if axis_name is not None:
        metrics = jax.lax.psum(metrics, axis_name)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    return new_state, metrics


def eval_step(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array, level: jax.Array, *,
              model: Any, corruption: str | None = None, axis_name: str | None = None) -> jax.Array:
    """Logits for one batch, optionally under `corruption` at `level` (traced: one
    compilation per corruption serves every severity). Per-example keys come from the
    example's index in the split, so the corrupted test set is the same for any batch
    size or device count."""
    del axis_name  # no collectives: the host gathers logits
    images = to_float_images(batch["image"])
    if corruption is not None:
        images = degrade.apply(images, degrade.example_keys(rng, batch["index"]), corruption, level)
    return model.apply(model_variables(state.params, state.batch_stats), images, train=False)


# ---------------------------------------------------------------------------------------
# Host side.


def make_optimizer(config: ml_collections.ConfigDict, label_tree: Any, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam(W) on trainable params (optionally cosine-scheduled, clipped), nothing on frozen."""
    opt = config.optimizer
    lr: Any = opt.learning_rate
    if config.schedule.name == "cosine":
        total = config.num_epochs * steps_per_epoch
        warmup = int(config.schedule.get("warmup_epochs", 0) * steps_per_epoch)
        lr = optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, max(warmup, 1), max(total, warmup + 1))
    elif config.schedule.name not in ("plateau", "constant"):
        raise UserError(f"config.schedule.name must be 'plateau', 'cosine' or 'constant', got {config.schedule.name!r}")
    chain = []
    if opt.get("grad_clip_norm"):
        chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    chain.append(optax.adamw(lr, weight_decay=opt.weight_decay) if opt.get("weight_decay") else optax.adam(lr))
    return partition.optimizer(optax.chain(*chain), label_tree)


def create_train_state(config: ml_collections.ConfigDict, model: Any, num_classes: int, rng: jax.Array,
                       steps_per_epoch: int, variables: Mapping | None = None):
    """Initial host TrainState, the optimizer and the trainable/frozen label tree."""
    if variables is None:
        variables = models.init_variables(model, rng, (config.image_size, config.image_size, 1))
        variables = load_pretrained_weights(config, variables)
    params = variables["params"]
    label_tree = partition.labels(params, config.trainable)
    tx = make_optimizer(config, label_tree, steps_per_epoch)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                       opt_state=tx.init(params), lr_scale=jnp.ones((), jnp.float32))
    return jax.device_get(state), tx, label_tree


def load_pretrained_weights(config: ml_collections.ConfigDict, variables: Mapping) -> dict:
    """Merges Keras ImageNet weights into the backbone when config.model.weights asks."""
    weights = config.model.get("weights", "none")
    if weights in (None, "", "none"):
        return dict(variables)
    from brainjax.models import keras_weights  # h5py only when weights are used

    return keras_weights.load_into(config.model.backbone, weights, variables,
                                   weights_dir=config.model.get("weights_dir"))


class _Plateau:
    """Keras ReduceLROnPlateau / EarlyStopping logic on the validation loss (host)."""

    @staticmethod
    def update(loop: dict, val_loss: float, config: ml_collections.ConfigDict) -> None:
        es, sched = config.early_stopping, config.schedule
        improved = val_loss < loop["best_val_loss"] - es.min_delta
        if improved:
            loop.update(best_val_loss=val_loss, best_epoch=loop["epoch"], bad_epochs=0)
        else:
            loop["bad_epochs"] += 1
        if sched.name == "plateau":
            if val_loss < loop["plateau_best"] - sched.min_delta:
                loop.update(plateau_best=val_loss, plateau_wait=0)
            else:
                loop["plateau_wait"] += 1
                if loop["plateau_wait"] >= sched.patience:
                    loop["lr_scale"] = max(loop["lr_scale"] * sched.factor, sched.min_lr / config.optimizer.learning_rate)
                    loop["plateau_wait"] = 0
        loop["stop"] = bool(es.enabled and loop["bad_epochs"] >= es.patience)
        loop["improved"] = bool(improved)


def _new_loop_state() -> dict:
    return dict(epoch=0, best_val_loss=math.inf, best_epoch=-1, bad_epochs=0, plateau_best=math.inf,
                plateau_wait=0, lr_scale=1.0, stop=False, improved=False)


class MetricsWriter:
    """JSON lines in <workdir>/metrics.jsonl (process 0 only)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = jax.process_index() == 0

    def write(self, **record: Any) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _check_finite(value: float, what: str, step: int, epoch: int, ckpt: checkpoint.Checkpoints) -> None:
    if not math.isfinite(value):
        kept = ckpt.latest_epoch
        where = (f"the last good checkpoint (epoch {kept}, {ckpt.latest.directory}) is kept"
                 if kept is not None else "no checkpoint had been written yet")
        raise FloatingPointError(
            f"non-finite {what} ({value}) at step {step}, epoch {epoch + 1}; training stopped and {where}. "
            "Lower config.optimizer.learning_rate (or check the input data), then rerun to resume.")


def _format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _sum_metrics(device_metrics: list) -> dict:
    host = jax.device_get(device_metrics)
    return {k: float(sum(np.asarray(m[k])[0] for m in host)) for k in host[0]}


def host_loss_and_accuracy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    loss = float(-logp[np.arange(len(labels)), labels].mean())
    return loss, float((logits.argmax(-1) == labels).mean())


def make_eval_fns(model: Any, corruptions: tuple[str, ...] = (), seed_protocol: bool = False) -> dict[str | None, Callable]:
    """pmapped eval steps: None -> clean, name -> under that corruption (+ the seed chain)."""
    names = (None, *corruptions, *((degrade.SEED_CHAIN,) if seed_protocol else ()))
    return {name: parallel.pmap_step(functools.partial(eval_step, model=model, corruption=name), num_broadcast=2)
            for name in names}


def real_examples(batch: Mapping[str, np.ndarray], keys: tuple[str, ...]) -> list[np.ndarray]:
    """`keys` of a padded eval batch [devices, per_device, ...], flattened over devices,
    without the padding (mask 0) rows."""
    mask = batch["mask"].reshape(-1) > 0
    return [batch[k].reshape(-1, *batch[k].shape[2:])[mask] for k in keys]


def predict_split(eval_fn: Callable, rstate: TrainState, batches, rng: jax.Array, level: float = 0.0):
    """(logits, labels, indices) of every real example in `batches`, host numpy."""
    outs, labels, indices = [], [], []
    level = np.float32(level)
    for batch in batches:
        logits = eval_fn(rstate, parallel.shard({k: v for k, v in batch.items() if k != "mask"}), rng, level)
        logits, = real_examples({"logits": np.asarray(logits), "mask": batch["mask"]}, ("logits",))
        label, index = real_examples(batch, ("label", "index"))
        outs.append(logits)
        labels.append(label)
        indices.append(index)
    return np.concatenate(outs), np.concatenate(labels), np.concatenate(indices)


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """<workdir>/config.json, the resolved config of the run (process 0)."""
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from `workdir` if it holds a checkpoint), then evaluates the best
    checkpoint on the test split, clean and degraded. Returns the report dict."""
    if config.get("fixed_degraded_copy") and not config.get("feature_cache"):
        raise UserError("config.fixed_degraded_copy=True (the seed's fixed degraded copies) is implemented for the "
                        "feature-cache path: set config.feature_cache=True (frozen base), or use "
                        "config.train_degrade for random per-step degradation instead")
    if config.get("feature_cache"):
        from brainjax import feature_cache

        return feature_cache.train_and_evaluate(config, workdir)
    from brainjax import evaluate  # matplotlib/sklearn only at the end
    from brainjax.data.pipeline import InputPipeline

    write_config(config, workdir)
    pipeline = InputPipeline(config, num_local_devices=jax.local_device_count(),
                             process_index=jax.process_index(), process_count=jax.process_count())
    steps_per_epoch = pipeline.steps_per_epoch(config.train_split)
    model = models.create_model(config.model, pipeline.num_classes)
    init_rng, train_rng, eval_rng = jax.random.split(jax.random.key(config.seed), 3)
    state, tx, label_tree = create_train_state(config, model, pipeline.num_classes, init_rng, steps_per_epoch)
    trainable, frozen = partition.split(state.params, label_tree)
    log.info("model %s/%s: %s trainable, %s frozen params; %d local devices, %d processes; %d steps/epoch",
             config.model.backbone, config.model.head, f"{partition.count(trainable):,}",
             f"{partition.count(frozen):,}", jax.local_device_count(), jax.process_count(), steps_per_epoch)

    ckpt = checkpoint.Checkpoints(workdir)
    loop = _new_loop_state()
    restored = ckpt.restore_latest(state)
    if restored is not None:
        state, loop = restored
        log.info("resuming from %s at epoch %d (step %d)", ckpt.latest.directory, loop["epoch"], int(state.step))
    writer = MetricsWriter(workdir)
    p_train = parallel.pmap_step(
        functools.partial(train_step, model=model, tx=tx, label_tree=label_tree,
                          degrade_cfg=config.train_degrade.to_dict(),
                          label_smoothing=config.optimizer.get("label_smoothing", 0.0)),
        donate_state=True)
    eval_fns = make_eval_fns(model, tuple(config.eval.corruptions), bool(config.eval.get("seed_protocol_split")))
    rstate = parallel.replicate(state.replace(lr_scale=np.float32(loop["lr_scale"])))
    del state

    start_epoch = loop["epoch"]
    epoch_times: list[float] = []
    while loop["epoch"] < config.num_epochs and not loop["stop"]:
        epoch = loop["epoch"]
        t0 = time.perf_counter()
        pending: list = []
        totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
        for i, batch in enumerate(pipeline.train_epoch(config.train_split, epoch, config.seed)):
            rstate, metrics = p_train(rstate, parallel.shard(batch), train_rng)
            pending.append(metrics)
            if len(pending) == config.log_every_steps or i + 1 == steps_per_epoch:
                window = _sum_metrics(pending)
                pending = []
                step = epoch * steps_per_epoch + i + 1
                _check_finite(window["loss_sum"], "training loss", step, epoch, ckpt)
                for k in totals:
                    totals[k] += window[k]
                writer.write(kind="train_window", step=step, epoch=epoch + 1,
                             loss=window["loss_sum"] / window["count"], accuracy=window["correct"] / window["count"])
        train_time = time.perf_counter() - t0
        logits, labels, _ = predict_split(eval_fns[None], rstate, pipeline.eval_batches(config.val_split), eval_rng)
        val_loss, val_acc = host_loss_and_accuracy(logits, labels)
        _check_finite(val_loss, "validation loss", epoch * steps_per_epoch + steps_per_epoch, epoch, ckpt)
        lr_used = config.optimizer.learning_rate * loop["lr_scale"]
        _Plateau.update(loop, val_loss, config)
        loop["epoch"] = epoch + 1
        rstate = rstate.replace(lr_scale=parallel.replicate(np.float32(loop["lr_scale"])))
        ckpt.save(loop["epoch"], parallel.unreplicate(rstate), loop, val_loss=val_loss, is_best=loop["improved"])
        epoch_times.append(time.perf_counter() - t0)
        remaining = 0 if loop["stop"] else config.num_epochs - loop["epoch"]
        eta = float(np.mean(epoch_times)) * remaining
        record = dict(kind="epoch", epoch=loop["epoch"], step=loop["epoch"] * steps_per_epoch,
                      loss=totals["loss_sum"] / totals["count"], accuracy=totals["correct"] / totals["count"],
                      val_loss=val_loss, val_accuracy=val_acc, learning_rate=lr_used,
                      images_per_sec=totals["count"] / train_time, epoch_seconds=epoch_times[-1])
        writer.write(**record)
        log.info("epoch %d/%d  loss %.4f acc %.4f | val_loss %.4f val_acc %.4f%s | lr %.2e | %.0f img/s | ETA %s",
                 loop["epoch"], config.num_epochs, record["loss"], record["accuracy"], val_loss, val_acc,
                 " *" if loop["improved"] else "", lr_used, record["images_per_sec"], _format_duration(eta))
        if loop["stop"]:
            log.info("early stopping: no val_loss improvement for %d epochs (best epoch %d)",
                     loop["bad_epochs"], loop["best_epoch"] + 1)
    if loop["epoch"] == start_epoch:
        log.info("training already complete in %s (epoch %d); evaluating", workdir, loop["epoch"])

    best = ckpt.restore_best(parallel.unreplicate(rstate))
    ckpt.close()
    if best is not None:
        log.info("restored best checkpoint (epoch %d, val_loss %.4f)", best[1]["best_epoch"] + 1, best[1]["best_val_loss"])
        rstate = parallel.replicate(best[0])
    return evaluate.evaluate(config, eval_fns, rstate, pipeline, workdir, eval_rng)


def restore_for_inference(config: ml_collections.ConfigDict, workdir: str, num_classes: int):
    """(model, host TrainState) of the best (else latest) checkpoint in `workdir`."""
    model = models.create_model(config.model, num_classes)
    template, _, _ = create_train_state(
        config, model, num_classes, jax.random.key(0), steps_per_epoch=1,
        variables=models.init_variables(model, jax.random.key(0), (config.image_size, config.image_size, 1)))
    ckpt = checkpoint.Checkpoints(workdir)
    try:
        restored = ckpt.restore_best(template) or ckpt.restore_latest(template)
    finally:
        ckpt.close()
    if restored is None:
        raise UserError(f"no checkpoint in {os.path.abspath(workdir)}; train first "
                        f"(python launch.py --workdir={workdir} --config=...)")
    return model, restored[0]
