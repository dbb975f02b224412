"""Feature caching for frozen bases with fixed inputs (the seed project's protocol).

When the base is frozen and the inputs do not change between epochs (each image plus one
fixed degraded copy, no random per-step augmentation before the base), the base's output
is the same every epoch. Computing it once and training the head on the cached,
globally-pooled features turns every epoch after the first into a few small matmuls.

This module holds the three pieces of that path and no loop of its own:
  features      `pooled_features` (+ `seed_protocol_inputs` for the fixed degraded copies)
  batch source  `CachedBatches`, a `loop.BatchSource` over device-ready feature batches
  head step     `HeadOnly`: the classifier's head as a model, so `steps.train_step`
                (inputs="features") trains it with the engine's loss and update rule
`brainjax.train` plugs them into `loop.fit`, which gives the cached path the same
checkpoints, exact resume, plateau / early stopping, NaN guard and writers as any run.

The head (`ClassifierHead`) starts with global average pooling, so features are cached
already pooled ([N, C]) and fed back as [N, 1, 1, C]: the head computes exactly what it
computes on the full feature map.
"""

from __future__ import annotations

import functools
from typing import Any, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from brainjax import degrade, parallel, partition, steps
from brainjax.errors import UserError


def seed_protocol_inputs(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each uint8 image plus one fixed degraded copy (random 1-3 basic corruptions), stored
    as uint8 like the seed's augmented dataset."""
    x = steps.to_float_images(jnp.asarray(images))
    keys = degrade.example_keys(jax.random.key(seed), jnp.arange(len(images)))
    degraded = jax.jit(lambda x, k: degrade.augment(x, k, degrade.SEED_CHAIN_CFG))(x, keys)
    degraded = np.asarray(jnp.round(degraded * 255.0)).astype(np.uint8)
    return np.concatenate([images, degraded]), np.concatenate([labels, labels])


def pooled_features(model: Any, variables: Mapping, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """Backbone output, globally average-pooled, for uint8 images: [N, C] float32."""
    backbone_vars = {col: v["backbone"] for col, v in variables.items() if "backbone" in v}

    @jax.jit
    def features(x):
        x = model.backbone_input(steps.to_float_images(x))
        return jnp.mean(model.backbone.apply(backbone_vars, x, train=False).astype(jnp.float32), axis=(1, 2))

    n = images.shape[0]
    pad = -n % batch
    padded = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)]) if pad else images
    out = [np.asarray(features(padded[i:i + batch])) for i in range(0, n + pad, batch)]
    return np.concatenate(out)[:n]


def as_head_input(features: np.ndarray) -> np.ndarray:
    """[N, C] pooled features -> [N, 1, 1, C] (what the head's pooling sees)."""
    return np.asarray(features)[:, None, None, :]


class HeadOnly(nn.Module):
    """The classifier's head as a model over cached features. Its parameters live under
    'head', as in the full classifier, so the same params, partition labels, optimizer
    state and dropout streams serve both."""

    head: nn.Module

    def __call__(self, features: jnp.ndarray, train: bool = False, with_quality: bool = False) -> jnp.ndarray:
        del with_quality  # cached features carry no degradation targets (see check_config)
        return self.head(features, train=train)


def batch_order(n: int, batch: int, epochs: int, seed: int, first_epoch: int = 0) -> Iterator[np.ndarray]:
    """Index batches: a seeded permutation per epoch, drop_remainder."""
    for epoch in range(first_epoch, first_epoch + epochs):
        order = np.random.default_rng([seed, epoch]).permutation(n)
        for s in range(n // batch):
            yield order[s * batch:(s + 1) * batch]


class CachedBatches:
    """`loop.BatchSource` over cached head inputs: a seeded permutation per epoch,
    drop_remainder, laid out [local_devices, per_device, ...] like the image pipeline."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int,
                 num_local_devices: int):
        if batch_size % num_local_devices:
            raise UserError(f"config.batch_size={batch_size} must be divisible by the number of devices "
                            f"({num_local_devices})")
        self.features, self.labels = features, np.asarray(labels, np.int32)
        self.batch_size, self.seed, self.devices = batch_size, seed, num_local_devices
        self.steps_per_epoch = max(len(self.labels) // batch_size, 1)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict]:
        d = self.devices
        for s, idx in enumerate(batch_order(len(self.labels), self.batch_size, 1, self.seed, first_epoch=epoch)):
            if s < start:
                continue
            yield parallel.device_rows({"image": self.features[idx], "label": self.labels[idx]}, d)


@functools.lru_cache(maxsize=16)
def _head_logits_fn(head: Any):
    return jax.jit(lambda p, x: head.apply({"params": p}, x, train=False))


def head_logits(head: Any, head_params: Any, features: np.ndarray, batch: int = 1024) -> np.ndarray:
    """Logits of the head on cached head inputs [N, 1, 1, C] (one device)."""
    apply = _head_logits_fn(head)
    return np.concatenate([np.asarray(apply(head_params, features[i:i + batch]))
                           for i in range(0, len(features), batch)])


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
    if config.train_augment and (float(config.train_augment.prob) > 0
                                        or float(config.train_augment.get("contrast_remap") or 0.0) > 0):
        problems.append("config.train_augment.prob and contrast_remap must be 0 (random augmentations change the "
                        "base's input)")
    if config.model.get("quality_head") and config.model.quality_head.get("enabled"):
        problems.append("config.model.quality_head.enabled must be False (cached inputs carry no degradation targets)")
    if config.model.base_batchnorm_train and has_batch_stats:
        problems.append("config.model.base_batchnorm_train must be False (batch statistics change per batch)")
    if jax.process_count() > 1:
        problems.append("feature caching runs in a single process (got %d)" % jax.process_count())
    if problems:
        raise UserError("config.feature_cache=True needs a frozen base and fixed inputs: " + "; ".join(problems))
