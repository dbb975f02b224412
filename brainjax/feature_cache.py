"""Feature caching for frozen bases with fixed inputs (the seed project's protocol).

When the base is frozen and the inputs do not change between epochs (each image plus one
fixed degraded copy, no random per-step augmentation before the base), the base's output
is the same every epoch. Computing it once and training the head on the cached,
globally-pooled features turns every epoch after the first into a few small matmuls.

The head (`ClassifierHead`) starts with global average pooling, so features are cached
already pooled ([N, C]) and fed back as [N, 1, 1, C]: the head computes exactly what it
computes on the full feature map.

`train_and_evaluate` is the engine's entry for `config.feature_cache=True` (chosen by
`brainjax.train.train_and_evaluate`); `fit_head` is the in-memory core that the
benchmark times against Keras.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from brainjax import degrade, partition, train
from brainjax.errors import UserError

log = logging.getLogger("brainjax")


def seed_protocol_inputs(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each uint8 image plus one fixed degraded copy (random 1-3 basic corruptions), stored
    as uint8 like the seed's augmented dataset."""
    x = train.to_float_images(jnp.asarray(images))
    keys = degrade.example_keys(jax.random.key(seed), jnp.arange(len(images)))
    degraded = jax.jit(lambda x, k: degrade.augment(x, k, degrade.SEED_CHAIN_CFG))(x, keys)
    degraded = np.asarray(jnp.round(degraded * 255.0)).astype(np.uint8)
    return np.concatenate([images, degraded]), np.concatenate([labels, labels])


def pooled_features(model: Any, variables: dict, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """Backbone output, globally average-pooled, for uint8 images: [N, C] float32."""
    backbone_vars = {col: v["backbone"] for col, v in variables.items() if "backbone" in v}

    @jax.jit
    def features(x):
        x = model.backbone_input(train.to_float_images(x))
        return jnp.mean(model.backbone.apply(backbone_vars, x, train=False).astype(jnp.float32), axis=(1, 2))

    n = images.shape[0]
    pad = -n % batch
    padded = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)]) if pad else images
    out = [np.asarray(features(padded[i:i + batch])) for i in range(0, n + pad, batch)]
    return np.concatenate(out)[:n]


def head_step(params: Any, opt_state: Any, x: jax.Array, y: jax.Array, key: jax.Array, lr_scale: jax.Array, *,
              head: Any, tx: optax.GradientTransformation, label_smoothing: float = 0.0):
    """One optimizer step of the head alone on pooled features x [B, 1, 1, C]; the same
    loss and update rule as `train.train_step` restricted to the head."""

    def loss_fn(p):
        logits = head.apply({"params": p}, x, train=True, rngs={"dropout": key})
        return train.cross_entropy(logits, y, label_smoothing).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    updates = jax.tree.map(lambda u: u * lr_scale, updates)
    return optax.apply_updates(params, updates), opt_state, loss


@functools.lru_cache(maxsize=16)
def _compiled_head_step(head: Any, tx: optax.GradientTransformation, label_smoothing: float = 0.0):
    return jax.jit(functools.partial(head_step, head=head, tx=tx, label_smoothing=label_smoothing),
                   donate_argnums=(0, 1))


def batch_order(n: int, batch: int, epochs: int, seed: int, first_epoch: int = 0) -> Iterator[np.ndarray]:
    """Index batches: a seeded permutation per epoch, drop_remainder."""
    for epoch in range(first_epoch, first_epoch + epochs):
        order = np.random.default_rng([seed, epoch]).permutation(n)
        for s in range(n // batch):
            yield order[s * batch:(s + 1) * batch]


class HeadTrainer:
    """Trains a head on cached pooled features epoch by epoch (params + optimizer state
    kept between epochs, so reduce-on-plateau and early stopping work as in the engine)."""

    def __init__(self, model: Any, head_params: Any, tx: optax.GradientTransformation, *, batch: int,
                 seed: int = 0, label_smoothing: float = 0.0):
        self.head, self.batch, self.seed = model.head, batch, seed
        self.step_fn = _compiled_head_step(model.head, tx, float(label_smoothing))
        self.params = jax.tree.map(lambda a: jnp.array(a, copy=True), head_params)  # donated; keep the caller's
        self.opt_state = tx.init(self.params)
        self.key = jax.random.key(seed)
        self.steps = 0
        self.epochs = 0

    def epoch(self, features: jax.Array, labels: jax.Array, lr_scale: float = 1.0) -> float:
        """One shuffled epoch over device-resident features [N, 1, 1, C]; mean training loss."""
        losses = []
        scale = jnp.float32(lr_scale)
        for idx in batch_order(len(labels), self.batch, 1, self.seed, first_epoch=self.epochs):
            self.params, self.opt_state, loss = self.step_fn(self.params, self.opt_state, features[idx], labels[idx],
                                                             jax.random.fold_in(self.key, self.steps), scale)
            losses.append(loss)
            self.steps += 1
        self.epochs += 1
        return float(np.mean(jax.device_get(losses))) if losses else float("nan")

    def logits(self, features: jax.Array, batch: int = 1024) -> np.ndarray:
        apply = _compiled_head_apply(self.head)
        return np.concatenate([np.asarray(apply(self.params, features[i:i + batch]))
                               for i in range(0, len(features), batch)])


@functools.lru_cache(maxsize=16)
def _compiled_head_apply(head: Any):
    return jax.jit(lambda p, x: head.apply({"params": p}, x, train=False))


def as_head_input(features: np.ndarray) -> jax.Array:
    """[N, C] pooled features -> device array [N, 1, 1, C] (what the head's pooling sees)."""
    return jnp.asarray(features)[:, None, None, :]


def train_head(model: Any, head_params: dict, features: np.ndarray, labels: np.ndarray, *, epochs: int,
               batch: int = 32, learning_rate: float = 1e-3, seed: int = 0) -> dict:
    """Trains the head alone on cached pooled features (Adam, cross-entropy, the head's
    dropout) for `epochs` epochs; returns the new head params (host)."""
    trainer = HeadTrainer(model, head_params, optax.adam(learning_rate), batch=batch, seed=seed)
    feats, labels = as_head_input(features), jnp.asarray(labels, jnp.int32)
    for _ in range(epochs):
        trainer.epoch(feats, labels)
    return jax.device_get(trainer.params)


def fit_head(model: Any, variables: dict, images: np.ndarray, labels: np.ndarray, *, epochs: int,
             batch: int = 32, learning_rate: float = 1e-3, seed: int = 0, feature_batch: int = 64) -> dict:
    """The seed protocol with a feature cache, in memory: inputs (each image + one fixed
    degraded copy) -> pooled base features once -> `epochs` epochs of head training.
    Returns the trained variables and the time of each phase (seconds)."""
    t0 = time.perf_counter()
    x, y = seed_protocol_inputs(images, labels, seed)
    t1 = time.perf_counter()
    feats = pooled_features(model, variables, x, batch=feature_batch)
    t2 = time.perf_counter()
    head = train_head(model, variables["params"]["head"], feats, y, epochs=epochs, batch=batch,
                      learning_rate=learning_rate, seed=seed)
    t3 = time.perf_counter()
    return {"variables": with_head(variables, head), "num_inputs": int(len(y)),
            "seconds": {"degraded_copies": t1 - t0, "features": t2 - t1, "head_training": t3 - t2, "total": t3 - t0}}


def with_head(variables: dict, head_params: dict) -> dict:
    out = {col: dict(v) for col, v in variables.items()}
    out["params"]["head"] = head_params
    return out


# ---------------------------------------------------------------------------------------
# The engine path (config.feature_cache=True).


def check_config(config: ml_collections.ConfigDict, label_tree: Any, has_batch_stats: bool) -> None:
    """Feature caching is exact only for a frozen base with inputs fixed across epochs."""
    flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(label_tree).items()}
    trains_base = [p for p, lab in flat.items() if lab == partition.TRAINABLE and not p.startswith("head/")]
    problems = []
    if trains_base:
        problems.append(f"config.trainable makes base parameters trainable (e.g. {trains_base[0]}); use ('^head/',)")
    if config.train_degrade.recipe != "none" or config.train_degrade.get("flip_lr"):
        problems.append("config.train_degrade must be fixed: recipe='none' and flip_lr=False "
                        "(use config.fixed_degraded_copy=True for the seed's one fixed degraded copy per image)")
    if config.model.get("base_batchnorm_train") and has_batch_stats:
        problems.append("config.model.base_batchnorm_train must be False (batch statistics change per batch)")
    if jax.process_count() > 1:
        problems.append("feature caching runs in a single process (got %d)" % jax.process_count())
    if problems:
        raise UserError("config.feature_cache=True needs a frozen base and fixed inputs: " + "; ".join(problems))


def _split_arrays(pipeline: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Every example of `split` (uint8 images, labels), in order, from the cached pipeline."""
    parts = [train.real_examples(batch, ("image", "label")) for batch in pipeline.eval_batches(split)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]).astype(np.int32)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The engine with a feature cache: base features once, the head trained on them with
    the configured optimizer, plateau schedule and early stopping (on the clean validation
    split), best head checkpointed like a normal run, then the standard evaluation
    (clean + every corruption, through the full model)."""
    from brainjax import checkpoint, evaluate, models, parallel
    from brainjax.data.pipeline import InputPipeline

    train.write_config(config, workdir)
    pipeline = InputPipeline(config, num_local_devices=jax.local_device_count())
    model = models.create_model(config.model, pipeline.num_classes)
    init_rng, _, eval_rng = jax.random.split(jax.random.key(config.seed), 3)
    n_train = pipeline.num_examples(config.train_split) * (2 if config.get("fixed_degraded_copy") else 1)
    steps_per_epoch = max(n_train // config.batch_size, 1)
    state, _, label_tree = train.create_train_state(config, model, pipeline.num_classes, init_rng, steps_per_epoch)
    check_config(config, label_tree, bool(state.batch_stats))
    eval_fns = train.make_eval_fns(model, tuple(config.eval.corruptions), bool(config.eval.get("seed_protocol_split")))
    ckpt = checkpoint.Checkpoints(workdir)
    latest = ckpt.restore_latest(state)
    if latest is not None and (latest[1]["epoch"] >= config.num_epochs or latest[1]["stop"]):
        log.info("training already complete in %s; evaluating the best checkpoint", workdir)
        state = ckpt.restore_best(state)[0]
    else:  # cached training is cheap: an interrupted run starts again from the features
        state = _train_cached(config, model, state, pipeline, ckpt, workdir, steps_per_epoch)
    ckpt.close()
    return evaluate.evaluate(config, eval_fns, parallel.replicate(state), pipeline, workdir, eval_rng)


def _train_cached(config, model, state, pipeline, ckpt, workdir, steps_per_epoch):
    t0 = time.perf_counter()
    variables = train.model_variables(state.params, state.batch_stats)
    images, labels = _split_arrays(pipeline, config.train_split)
    if config.get("fixed_degraded_copy"):
        images, labels = seed_protocol_inputs(images, labels, config.seed)
    val_images, val_labels = _split_arrays(pipeline, config.val_split)
    fb = int(config.get("eval_batch_size", config.batch_size))
    feats = as_head_input(pooled_features(model, variables, images, fb))
    val_feats = as_head_input(pooled_features(model, variables, val_images, fb))
    labels_d = jnp.asarray(labels)
    log.info("feature cache: %d training inputs%s and %d validation images through the frozen base in %.1f s",
             len(labels), " (each image + one fixed degraded copy)" if config.get("fixed_degraded_copy") else "",
             len(val_labels), time.perf_counter() - t0)
    head_labels = jax.tree.map(lambda _: partition.TRAINABLE, state.params["head"])
    tx = train.make_optimizer(config, head_labels, steps_per_epoch)
    trainer = HeadTrainer(model, state.params["head"], tx, batch=int(config.batch_size), seed=config.seed,
                          label_smoothing=config.optimizer.get("label_smoothing", 0.0))
    writer = train.MetricsWriter(workdir)
    loop = train._new_loop_state()
    best_head = jax.device_get(trainer.params)

    def state_with(head: Any) -> Any:
        return state.replace(params={**state.params, "head": head}, step=np.int32(trainer.steps))

    while loop["epoch"] < config.num_epochs and not loop["stop"]:
        t_epoch = time.perf_counter()
        loss = trainer.epoch(feats, labels_d, loop["lr_scale"])
        val_loss, val_acc = train.host_loss_and_accuracy(trainer.logits(val_feats), val_labels)
        train._check_finite(loss, "training loss", trainer.steps, loop["epoch"], ckpt)
        train._check_finite(val_loss, "validation loss", trainer.steps, loop["epoch"], ckpt)
        lr_used = config.optimizer.learning_rate * loop["lr_scale"]
        train._Plateau.update(loop, val_loss, config)
        loop["epoch"] += 1
        if loop["improved"]:
            best_head = jax.device_get(trainer.params)
            ckpt.save(loop["epoch"], state_with(best_head), loop, val_loss=val_loss, is_best=True)
        writer.write(kind="epoch", epoch=loop["epoch"], step=trainer.steps, loss=loss, val_loss=val_loss,
                     val_accuracy=val_acc, learning_rate=lr_used, epoch_seconds=time.perf_counter() - t_epoch,
                     feature_cache=True)
        log.info("epoch %d/%d  loss %.4f | val_loss %.4f val_acc %.4f%s | lr %.2e (cached features)", loop["epoch"],
                 config.num_epochs, loss, val_loss, val_acc, " *" if loop["improved"] else "", lr_used)
    final = state_with(best_head)
    if not loop["improved"]:  # record completion (the best state is already in best/)
        ckpt.save(loop["epoch"], final, loop, val_loss=loop["best_val_loss"], is_best=False)
    log.info("feature-cache training done in %.1f s (best epoch %d)", time.perf_counter() - t0, loop["best_epoch"] + 1)
    return final
