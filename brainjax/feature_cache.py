"""Feature caching for frozen bases with fixed inputs (the seed project's protocol).

When the base is frozen and the inputs do not change between epochs (each image plus one
fixed degraded copy, no random per-step augmentation before the base), the base's output
is the same every epoch. Computing it once and training the head on the cached,
globally-pooled features turns every epoch after the first into a few small matmuls.

The head (`ClassifierHead`) starts with global average pooling, so features are cached
already pooled ([N, C]) and fed back as [N, 1, 1, C]: the head computes exactly what it
computes on the full feature map.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from brainjax import degrade, train


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


def train_head(model: Any, head_params: dict, features: np.ndarray, labels: np.ndarray, *, epochs: int,
               batch: int = 32, learning_rate: float = 1e-3, seed: int = 0) -> dict:
    """Trains the head alone on cached pooled features (Adam, cross-entropy, dropout as
    configured in the head); returns the new head params."""
    step, tx = _head_step(model.head, learning_rate)
    opt_state = tx.init(head_params)
    feats = jnp.asarray(features)[:, None, None, :]
    labels = jnp.asarray(labels, jnp.int32)

    params = jax.tree.map(lambda a: jnp.array(a, copy=True), head_params)  # donated below; keep the caller's
    key = jax.random.key(seed)
    for i, idx in enumerate(batch_order(len(labels), batch, epochs, seed)):
        params, opt_state = step(params, opt_state, feats[idx], labels[idx], jax.random.fold_in(key, i))
    return jax.device_get(params)


@functools.lru_cache(maxsize=16)
def _head_step(head: Any, learning_rate: float):
    """(jitted head-only Adam step, optimizer), compiled once per head and learning rate."""
    tx = optax.adam(learning_rate)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, x, y, key):
        def loss_fn(p):
            logits = head.apply({"params": p}, x, train=True, rngs={"dropout": key})
            return train.cross_entropy(logits, y).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step, tx


def batch_order(n: int, batch: int, epochs: int, seed: int):
    """Index batches: a seeded permutation per epoch, drop_remainder."""
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(n)
        for s in range(n // batch):
            yield order[s * batch:(s + 1) * batch]


def with_head(variables: dict, head_params: dict) -> dict:
    out = {col: dict(v) for col, v in variables.items()}
    out["params"]["head"] = head_params
    return out
