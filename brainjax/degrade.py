"""On-device image degradations: the low-quality-scan conditions brainjax must survive.

Everything here is a pure jax function of float32 images in [0, 1] (shape [N, H, W, C])
and jax PRNG keys, so it runs inside the jitted train/eval steps, per example (vmapped,
one key per example) and is reproducible from the step's rng.

Two uses:
  * evaluation at graded severities: `corrupt(images, name, severity, rng)` with the
    severity constants below (ImageNet-C's values where ImageNet-C defines the corruption);
  * robustness training: `augment(images, keys, cfg)` applies the seed project's recipe
    (a random non-empty subset of the corruptions, in random order, per image) with levels
    drawn uniformly from configurable ranges, to a configurable share of the batch.

Levels are in physical units: noise std on [0, 1]; blur sigma in pixels *at 224 px*
(scaled with the image size, so a severity means the same blur relative to the anatomy
at every resolution); downsampling as the kept fraction of the side length.
"""

from __future__ import annotations

from brainjax.errors import UserError

import functools
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

# Severity 1..5 levels per corruption.
GAUSSIAN_NOISE_SIGMA = (0.08, 0.12, 0.18, 0.26, 0.38)  # ImageNet-C gaussian_noise
GAUSSIAN_BLUR_SIGMA_224 = (1.0, 2.0, 3.0, 4.0, 6.0)  # ImageNet-C gaussian_blur, px at 224
DOWNSAMPLE_FACTOR = (0.6, 0.5, 0.4, 0.3, 0.25)  # ImageNet-C pixelate factors

SEVERITIES: Mapping[str, tuple[float, ...]] = {
    "gaussian_noise": GAUSSIAN_NOISE_SIGMA,
    "gaussian_blur": GAUSSIAN_BLUR_SIGMA_224,
    "downsample": DOWNSAMPLE_FACTOR,
}
NAMES: tuple[str, ...] = tuple(SEVERITIES)
REFERENCE_SIZE = 224


def gaussian_noise(image: jax.Array, key: jax.Array, sigma: jax.Array) -> jax.Array:
    """Additive white Gaussian noise of std `sigma`, clipped back to [0, 1]."""
    return jnp.clip(image + sigma * jax.random.normal(key, image.shape, image.dtype), 0.0, 1.0)


def blur_matrix(size: int, sigma: jax.Array) -> jax.Array:
    """[size, size] matrix M with (M @ x) = 1-D Gaussian blur of x along its first axis,
    with whole-sample symmetric ('reflect') boundaries folded in: entry (i, j) sums the
    kernel over j and its mirror images -j and 2(size-1)-j. Rows sum to 1."""
    i = jnp.arange(size, dtype=jnp.float32)[:, None]
    j = jnp.arange(size, dtype=jnp.float32)[None, :]
    g = lambda d: jnp.exp(-0.5 * (d / sigma) ** 2)
    m = g(i - j) + jnp.where(j >= 1, g(i + j), 0.0) + jnp.where(j <= size - 2, g(i - (2 * (size - 1) - j)), 0.0)
    norm = jnp.sum(g(jnp.arange(-(size - 1), size, dtype=jnp.float32)))
    return m / norm


def gaussian_blur(image: jax.Array, key: jax.Array, sigma_224: jax.Array) -> jax.Array:
    """Gaussian blur with sigma given in pixels at 224 px (scaled to the image size).

    Separable, as two small matrix products (rows, then columns) with reflected edges,
    so the border does not darken. The same filter as dm-pix's `gaussian_blur` on a
    reflect-padded image (tests check it), but ~10x faster here: with a different sigma
    per example, vmapped dm-pix becomes a grouped depthwise convolution, which XLA's CPU
    backend runs slowly, while batched small matmuls are its strength.
    """
    del key
    height, width, _ = image.shape
    scale = height / REFERENCE_SIZE
    sigma = jnp.maximum(sigma_224 * scale, 1e-3)
    rows, cols = blur_matrix(height, sigma), blur_matrix(width, sigma)
    return jnp.einsum("ij,jkc,lk->ilc", rows, image, cols, precision=jax.lax.Precision.HIGHEST)


def downsample(image: jax.Array, key: jax.Array, factor: jax.Array) -> jax.Array:
    """Downsample to `factor` of the side length (antialiased), then back up (bilinear).

    Shapes stay static for any traced factor: the small image is written into the
    top-left corner of a full-size buffer by `scale_and_translate`, its unused part is
    filled by edge replication, and a second `scale_and_translate` stretches it back.
    """
    del key
    height, width, _ = image.shape
    small_h = jnp.clip(jnp.round(height * factor), 1, height)
    small_w = jnp.clip(jnp.round(width * factor), 1, width)
    scale = jnp.stack([small_h / height, small_w / width])
    zero = jnp.zeros(2)
    small = jax.image.scale_and_translate(image, image.shape, (0, 1), scale, zero, "linear", antialias=True)
    rows = jnp.minimum(jnp.arange(height), small_h.astype(jnp.int32) - 1)
    cols = jnp.minimum(jnp.arange(width), small_w.astype(jnp.int32) - 1)
    small = small[rows][:, cols]
    up = jax.image.scale_and_translate(small, image.shape, (0, 1), 1.0 / scale, zero, "linear", antialias=True)
    return jnp.clip(up, 0.0, 1.0)


CORRUPTIONS: Mapping[str, Callable[[jax.Array, jax.Array, jax.Array], jax.Array]] = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "downsample": downsample,
}


def level_for(name: str, severity: int) -> float:
    """The physical level of `name` at `severity` (1..5)."""
    if name not in SEVERITIES:
        raise UserError(f"unknown corruption {name!r}; expected one of {NAMES}")
    levels = SEVERITIES[name]
    if not 1 <= int(severity) <= len(levels):
        raise UserError(f"severity must be in 1..{len(levels)}, got {severity}")
    return levels[int(severity) - 1]


def apply(images: jax.Array, keys: jax.Array, name: str, level: jax.Array) -> jax.Array:
    """Applies corruption `name` at `level` (scalar or per-example [N]) with per-example keys."""
    level = jnp.broadcast_to(jnp.asarray(level, jnp.float32), images.shape[:1])
    return jax.vmap(CORRUPTIONS[name])(images, keys, level)


def corrupt(images: jax.Array, name: str, severity: int, rng: jax.Array) -> jax.Array:
    """Corrupts a batch [N, H, W, C] in [0, 1] at an integer severity; one draw per example."""
    keys = jax.random.split(rng, images.shape[0])
    return apply(images, keys, name, level_for(name, severity))


def example_keys(rng: jax.Array, indices: jax.Array) -> jax.Array:
    """One key per example from its *global* index, so the draw does not depend on how
    the batch is split over devices or processes."""
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(indices)


def _chain_one(image, key, names: Sequence[str], ranges: Sequence[tuple[float, float]], prob: float):
    """Seed recipe for one image: with probability `prob`, a random non-empty subset of
    `names` (1..len uniformly), in random order, each at a uniform level from its range."""
    k_apply, k_count, k_order, k_level, k_ops = jax.random.split(key, 5)
    n = len(names)
    count = jax.random.randint(k_count, (), 1, n + 1)
    order = jax.random.permutation(k_order, n)
    lo = jnp.array([r[0] for r in ranges], jnp.float32)
    hi = jnp.array([r[1] for r in ranges], jnp.float32)
    levels = jax.random.uniform(k_level, (n,), minval=lo, maxval=hi)
    op_keys = jax.random.split(k_ops, n)
    branches = [functools.partial(lambda f, i, x: f(x, op_keys[i], levels[i]), CORRUPTIONS[nm], i)
                for i, nm in enumerate(names)]
    out = image
    for slot in range(n):
        out = jnp.where(slot < count, jax.lax.switch(order[slot], branches, out), out)
    return jnp.where(jax.random.bernoulli(k_apply, prob), out, image)


def random_flip_lr(images: jax.Array, keys: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2 (axial slices are near-symmetric)."""
    flip = jax.vmap(lambda k: jax.random.bernoulli(k, 0.5))(keys)
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def augment(images: jax.Array, keys: jax.Array, cfg: Mapping) -> jax.Array:
    """Training-time degradation per `cfg` (see configs/default.py, `train_degrade`).

    cfg.flip_lr: random left-right mirroring first (geometry, not a degradation).
    cfg.recipe: 'none' | 'chain' (seed recipe) | 'one' (exactly one random corruption).
    cfg.prob: share of images degraded. cfg.<name>: (low, high) level range per corruption;
    only corruptions with a range are used.
    """
    if cfg.get("flip_lr", False):
        keys, flip_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
        images = random_flip_lr(images, flip_keys)
    recipe = cfg.get("recipe", "none")
    if recipe == "none" or cfg.get("prob", 0.0) <= 0:
        return images
    names = [nm for nm in NAMES if cfg.get(nm) is not None]
    if not names:
        raise UserError("train_degrade has a recipe but no corruption ranges "
                         f"(set any of {NAMES} to a (low, high) pair)")
    ranges = [tuple(cfg[nm]) for nm in names]
    if recipe == "one":
        def one(image, key):
            k_pick, k_rest = jax.random.split(key)
            pick = jax.random.randint(k_pick, (), 0, len(names))
            outs = [_chain_one(image, k_rest, [nm], [rg], cfg["prob"]) for nm, rg in zip(names, ranges)]
            return jnp.stack(outs)[pick]
        return jax.vmap(one)(images, keys)
    if recipe != "chain":
        raise UserError(f"train_degrade.recipe must be 'none', 'chain' or 'one', got {recipe!r}")
    return jax.vmap(lambda im, k: _chain_one(im, k, names, ranges, cfg["prob"]))(images, keys)
