"""Training state: the TrainState pytree, the optimizer and pretrained-weight loading.

Everything here is host-side construction; the steps (`brainjax.steps`) transform the
state and the loop (`brainjax.loop`) owns it while training.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from brainjax import models, parallel, partition
from brainjax.models import keras_weights
from brainjax.errors import UserError

log = logging.getLogger("brainjax")


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    batch_stats: Any  # {} for models without BatchNorm
    opt_state: Any
    lr_scale: jax.Array  # float32 scalar, lowered by reduce-on-plateau


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> float | optax.Schedule:
    """The optimizer's learning rate: a constant, or a function of the step ('cosine').
    Reduce-on-plateau scales it further by TrainState.lr_scale."""
    lr = config.optimizer.learning_rate
    if config.schedule.name == "cosine":
        total = config.num_epochs * steps_per_epoch
        warmup = int(config.schedule.warmup_epochs * steps_per_epoch)
        return optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, max(warmup, 1), max(total, warmup + 1))
    if config.schedule.name not in ("plateau", "constant"):
        raise UserError(f"config.schedule.name must be 'plateau', 'cosine' or 'constant', got {config.schedule.name!r}")
    return lr


def learning_rate_at(config: ml_collections.ConfigDict, steps_per_epoch: int, step: int, lr_scale: float) -> float:
    """The learning rate the update of `step` used (what metrics.jsonl and the log show)."""
    lr = learning_rate_schedule(config, steps_per_epoch)
    return float(lr(step) if callable(lr) else lr) * lr_scale


def make_optimizer(config: ml_collections.ConfigDict, label_tree: Any, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam(W) on trainable params (optionally cosine-scheduled, clipped), nothing on frozen."""
    opt = config.optimizer
    lr = learning_rate_schedule(config, steps_per_epoch)
    chain = []
    if opt.get("grad_clip_norm"):
        chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    chain.append(optax.adamw(lr, weight_decay=opt.weight_decay) if opt.get("weight_decay") else optax.adam(lr))
    return partition.optimizer(optax.chain(*chain), label_tree)


def initial_variables(config: ml_collections.ConfigDict, model: Any, rng: jax.Array) -> dict:
    """Randomly initialised variables, with the configured pretrained weights merged in.

    The weights file is found (or downloaded) before the initialisation: a missing file is
    an error within seconds, not after compiling the backbone's init (VGG16: ~8 s here)."""
    weights_path = locate_pretrained_weights(config)
    variables = models.init_variables(model, rng, (config.image_size, config.image_size, 1))
    if weights_path is None:
        return dict(variables)
    return keras_weights.load_into(config.model.backbone, weights_path, variables)


def create_train_state(config: ml_collections.ConfigDict, model: Any, num_classes: int, rng: jax.Array,
                       steps_per_epoch: int, variables: Mapping | None = None):
    """(initial host TrainState, the optimizer, the trainable/frozen label tree)."""
    del num_classes  # the model already has its head size; kept for call-site clarity
    if variables is None:
        variables = initial_variables(config, model, rng)
    params = variables["params"]
    patterns, added = partition.with_head_trained(config.trainable, params, "quality_head")
    if added:
        log.info("config.trainable %s leaves the quality head frozen at its random init; training it too "
                 "('^quality_head/' added): its loss is quality_loss_weight, and quality= / abstain_rule=quality "
                 "read it", list(config.trainable))
    label_tree = partition.labels(params, patterns)
    tx = make_optimizer(config, label_tree, steps_per_epoch)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                       opt_state=tx.init(params), lr_scale=jnp.ones((), jnp.float32))
    return jax.device_get(state), tx, label_tree


def locate_pretrained_weights(config: ml_collections.ConfigDict) -> str | None:
    """Path of the Keras weights file config.model.weights asks for (None: no pretrained
    weights); a clear UserError when it is missing.

    With several processes, process 0 resolves (and if needed downloads) the file first
    and the others wait at a barrier, so they never race on the same cache file."""
    weights = config.model.weights
    if weights in (None, "", "none"):
        return None
    return parallel.process_zero_first(
        "pretrained_weights",
        lambda: keras_weights.locate(config.model.backbone, weights, weights_dir=config.model.weights_dir))
