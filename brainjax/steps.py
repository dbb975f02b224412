"""Pure, module-level step functions (big_vision style), compiled once by `parallel`.

`train_step` / `eval_step` are functions of (state, batch, rng, ...); the static pieces
(model, optimizer, partition labels, degradation config) are bound with
`functools.partial`, the device axis by `brainjax.parallel` (the only pmap user). Each
step's randomness is `fold_in(rng, state.step)` and per-example degradation keys come
from the example's global index, so a run is reproducible from its seed and a resumed
run (even mid-epoch) replays exactly what an uninterrupted one would have done.

The same `train_step` trains from images (on-device degradation, then the full model)
and from cached backbone features (`inputs="features"`: the model is the head alone),
so the feature-cache path has no maths of its own.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from brainjax import augmentations, degrade, models, partition


AUGMENT_STREAM = 0x617567  # folded into the degradation key: the augmentation draws


def model_variables(params: Any, batch_stats: Any) -> dict:
    """Flax variables from a TrainState's params and (possibly empty) batch_stats."""
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def to_float_images(images: jax.Array) -> jax.Array:
    """uint8 [N, H, W, 1] from the pipeline -> float32 in [0, 1] (on device)."""
    return images.astype(jnp.float32) / 255.0


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy in float32, optionally with label smoothing."""
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def global_indices(n: int, axis_name: str | None) -> jax.Array:
    """Index of each row of this device's batch within the global batch (devices of all
    processes in order), so per-example keys do not depend on the device layout."""
    offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * n
    return offset + jnp.arange(n)


def training_images(images: jax.Array, degrade_rng: jax.Array, augment_cfg: Mapping | None,
                    degrade_cfg: Mapping | None, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
    """(float images, quality targets) of a training batch: uint8 -> [0, 1], appearance
    augmentation, then the degradation chain, per example with keys from its global
    index. The augmentation has its own key stream, so the degradation draws are the same
    with or without it."""
    x = to_float_images(images)
    index = global_indices(images.shape[0], axis_name)
    if augment_cfg:
        x = augmentations.apply(x, degrade.example_keys(jax.random.fold_in(degrade_rng, AUGMENT_STREAM), index),
                                augment_cfg)
    return degrade.augment_with_targets(x, degrade.example_keys(degrade_rng, index), degrade_cfg or {})


def train_step(state: Any, batch: Mapping[str, jax.Array], rng: jax.Array, *, model: Any,
               tx: optax.GradientTransformation, label_tree: Any, degrade_cfg: Mapping | None = None,
               augment_cfg: Mapping | None = None, label_smoothing: float = 0.0, quality_loss_weight: float = 0.0,
               inputs: str = "images",
               axis_name: str | None = None) -> tuple[Any, dict]:
    """One optimizer step on one (per-device) batch; returns summed metrics.

    inputs="images": uint8 images, augmented (`augment_cfg`: appearance and pose) and then
    degraded (`degrade_cfg`: acquisition quality) on device per example, through the full
    model. inputs="features": the batch holds cached backbone outputs and `model` is the
    head alone (`feature_cache.HeadOnly`): the same loss, optimizer and update rule.
    Only the trainable subtree is differentiated: the frozen base enters the loss as a
    constant, so XLA builds no backward pass through it. BatchNorm statistics are
    averaged over devices when the base trains them.
    quality_loss_weight > 0 (model with a quality head, images only): adds that weight x
    the binary cross-entropy between the quality head's logits and the strength of each
    corruption this step applied to each example (degrade.augment_with_targets).
    """
    step_rng = jax.random.fold_in(rng, state.step)
    degrade_rng, dropout_rng = jax.random.split(step_rng)
    labels = batch["label"]
    n = labels.shape[0]
    if inputs == "images":
        x, quality_targets = training_images(batch["image"], degrade_rng, augment_cfg, degrade_cfg, axis_name)
    else:
        x, quality_targets = batch["image"], None
    with_quality = quality_loss_weight > 0 and quality_targets is not None
    if axis_name is not None:
        dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(axis_name))

    trainable, frozen = partition.split(state.params, label_tree)

    def loss_fn(trainable_params):
        params = partition.merge(trainable_params, jax.lax.stop_gradient(frozen))
        out, new_vars = model.apply(model_variables(params, state.batch_stats), x, train=True,
                                    with_quality=with_quality, rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
        logits = out[0] if with_quality else out
        loss = cross_entropy(logits, labels, label_smoothing).mean()
        if with_quality:
            quality_bce = optax.sigmoid_binary_cross_entropy(out[1].astype(jnp.float32), quality_targets)
            loss = loss + quality_loss_weight * quality_bce.mean()
        return loss, (logits, new_vars.get("batch_stats", state.batch_stats))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        batch_stats = jax.lax.pmean(batch_stats, axis_name)
    new_state = apply_trainable_update(state, tx, label_tree, grads, batch_stats)
    metrics = {
        "loss_sum": loss * n,
        "correct": jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32),
        "count": jnp.asarray(n, jnp.float32),
    }
    if axis_name is not None:
        metrics = jax.lax.psum(metrics, axis_name)
    return new_state, metrics


def apply_trainable_update(state: Any, tx: optax.GradientTransformation, label_tree: Any, grads: Any,
                           batch_stats: Any) -> Any:
    """The optimizer update from the trainable subtree's `grads` (the frozen leaves get
    zero gradients for `tx`, and keep their values), scaled by the plateau's lr_scale."""
    trainable, frozen = partition.split(state.params, label_tree)
    full_grads = partition.merge(grads, jax.tree.map(jnp.zeros_like, frozen))
    updates, opt_state = tx.update(full_grads, state.opt_state, state.params)
    trainable_updates, _ = partition.split(updates, label_tree)
    trainable_updates = jax.tree.map(lambda u: u * state.lr_scale, trainable_updates)
    params = partition.merge(optax.apply_updates(trainable, trainable_updates), frozen)
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)


def eval_step(variables: Mapping, batch: Mapping[str, jax.Array], rng: jax.Array, level: jax.Array, *,
              model: Any, corruption: str | None = None, axis_name: str | None = None,
              with_quality: bool = False) -> jax.Array | dict:
    """Logits for one batch, optionally under `corruption` at `level` (traced: one
    compilation per corruption serves every severity). Per-example keys come from the
    example's index in the split, so the corrupted test set is the same for any batch
    size, device count or process count. Takes model variables, not a TrainState, so
    evaluation never needs an optimizer. with_quality: {"logits", "quality"} with the
    quality head's scan-quality score in [0, 1] (models.quality_score)."""
    del axis_name  # no collectives: the host gathers logits
    images = to_float_images(batch["image"])
    if corruption is not None:
        images = degrade.apply(images, degrade.example_keys(rng, batch["index"]), corruption, level)
    if not with_quality:
        return model.apply(variables, images, train=False)
    logits, quality_logits = model.apply(variables, images, train=False, with_quality=True)
    return {"logits": logits, "quality": models.quality_score(quality_logits)}
