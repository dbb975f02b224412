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
import numpy as np

# Severity 1..5 levels per corruption (physical units; see BUILD_NOTES.md).
GAUSSIAN_NOISE_SIGMA = (0.08, 0.12, 0.18, 0.26, 0.38)  # ImageNet-C gaussian_noise, std on [0, 1]
RICIAN_NOISE_SIGMA = (0.04, 0.07, 0.10, 0.14, 0.20)  # std of each (real, imaginary) channel
GAUSSIAN_BLUR_SIGMA_224 = (1.0, 2.0, 3.0, 4.0, 6.0)  # ImageNet-C gaussian_blur, px at 224
MOTION_BLUR_LENGTH_224 = (6.0, 10.0, 15.0, 22.0, 30.0)  # blur path length, px at 224
DOWNSAMPLE_FACTOR = (0.6, 0.5, 0.4, 0.3, 0.25)  # ImageNet-C pixelate factors
KSPACE_KEEP_FRACTION = (0.5, 0.35, 0.25, 0.18, 0.12)  # share of phase-encode lines kept
MOTION_GHOSTING_SHIFT_224 = (3.0, 5.0, 8.0, 11.0, 15.0)  # displacement of moved lines, px at 224
BIAS_FIELD_LOG_AMPLITUDE = (0.15, 0.25, 0.35, 0.5, 0.7)  # field in [exp(-a), exp(a)]
CONTRAST_FACTOR = (0.4, 0.3, 0.2, 0.1, 0.05)  # ImageNet-C contrast
JPEG_QUALITY = (25.0, 18.0, 15.0, 10.0, 7.0)  # ImageNet-C jpeg_compression

SEVERITIES: Mapping[str, tuple[float, ...]] = {
    "gaussian_noise": GAUSSIAN_NOISE_SIGMA,
    "rician_noise": RICIAN_NOISE_SIGMA,
    "gaussian_blur": GAUSSIAN_BLUR_SIGMA_224,
    "motion_blur": MOTION_BLUR_LENGTH_224,
    "downsample": DOWNSAMPLE_FACTOR,
    "kspace_undersample": KSPACE_KEEP_FRACTION,
    "motion_ghosting": MOTION_GHOSTING_SHIFT_224,
    "bias_field": BIAS_FIELD_LOG_AMPLITUDE,
    "contrast": CONTRAST_FACTOR,
    "jpeg": JPEG_QUALITY,
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


def rician_noise(image: jax.Array, key: jax.Array, sigma: jax.Array) -> jax.Array:
    """Magnitude-image noise |x + n1 + i n2|, n1, n2 ~ N(0, sigma^2): what MRI magnitude
    images carry (biased upwards in dark regions, Gaussian-like in bright ones)."""
    k1, k2 = jax.random.split(key)
    real = image + sigma * jax.random.normal(k1, image.shape, image.dtype)
    imag = sigma * jax.random.normal(k2, image.shape, image.dtype)
    return jnp.clip(jnp.sqrt(real**2 + imag**2), 0.0, 1.0)


_MOTION_TAPS = 17


def shift_matrix(size: int, offset: jax.Array) -> jax.Array:
    """[size, size] matrix M with (M @ x)[i] = x sampled at i + offset along the first axis:
    linear interpolation with mirrored edges, exactly what `map_coordinates(order=1,
    mode='mirror')` computes per axis."""
    coord = jnp.arange(size, dtype=jnp.float32) + offset
    lower = jnp.floor(coord)
    upper_weight = coord - lower
    period = 2 * (size - 1)
    mirror = lambda i: jnp.abs((i + size - 1) % period - (size - 1)) if size > 1 else jnp.zeros_like(i)
    index = lower.astype(jnp.int32)
    return ((1 - upper_weight)[:, None] * jax.nn.one_hot(mirror(index), size)
            + upper_weight[:, None] * jax.nn.one_hot(mirror(index + 1), size))


def motion_blur(image: jax.Array, key: jax.Array, length_224: jax.Array) -> jax.Array:
    """Linear motion blur: the mean of the image sampled at 17 points along a segment of
    `length` px (at 224 px, scaled), in a random direction per example; bilinear sampling,
    mirrored edges.

    Bilinear sampling at a constant offset is separable, so each tap is two small matrix
    products (`shift_matrix` along rows and columns), not a gather: the same values as
    `jax.scipy.ndimage.map_coordinates` (tests check it) at ~1/3 of its CPU time
    (measured); the gathers made this corruption most of a training chain's cost."""
    height, width, _ = image.shape
    length = length_224 * height / REFERENCE_SIZE
    angle = jax.random.uniform(key, (), minval=0.0, maxval=jnp.pi)
    t = (jnp.arange(_MOTION_TAPS, dtype=jnp.float32) / (_MOTION_TAPS - 1) - 0.5) * length
    rows = jax.vmap(lambda o: shift_matrix(height, o))(t * jnp.sin(angle))
    cols = jax.vmap(lambda o: shift_matrix(width, o))(t * jnp.cos(angle))
    taps = jnp.einsum("tij,jkc,tlk->ilc", rows, image, cols, precision=jax.lax.Precision.HIGHEST)
    return taps / _MOTION_TAPS


def _kspace(image: jax.Array) -> jax.Array:
    return jnp.fft.fftshift(jnp.fft.fft2(image, axes=(0, 1)), axes=(0, 1))


def _image(kspace: jax.Array) -> jax.Array:
    return jnp.clip(jnp.abs(jnp.fft.ifft2(jnp.fft.ifftshift(kspace, axes=(0, 1)), axes=(0, 1))), 0.0, 1.0)


def kspace_mask(key: jax.Array, lines: int, keep: jax.Array) -> jax.Array:
    """[lines] 0/1 mask of kept phase-encode lines (k-space centred): half of the budget
    round(keep * lines) is the contiguous low-frequency centre (Gibbs ringing), the other
    half random outer lines (incoherent aliasing), like a variable-density Cartesian scan."""
    n_keep = jnp.clip(jnp.round(keep * lines), 1, lines)
    n_center = jnp.ceil(n_keep / 2)
    distance = jnp.abs(jnp.arange(lines) - lines // 2).astype(jnp.float32)
    # Rank lines: centre lines first (by distance), then the rest in random order.
    order = jnp.argsort(distance + 0.1 * jax.random.uniform(key, (lines,), minval=0, maxval=0.5))
    center_rank = jnp.empty(lines, jnp.int32).at[order].set(jnp.arange(lines, dtype=jnp.int32))
    is_center = center_rank < n_center
    scores = jnp.where(is_center, -1.0, jax.random.uniform(jax.random.fold_in(key, 1), (lines,)))
    rank = jnp.empty(lines, jnp.int32).at[jnp.argsort(scores)].set(jnp.arange(lines, dtype=jnp.int32))
    return (rank < n_keep).astype(jnp.float32)


def kspace_undersample(image: jax.Array, key: jax.Array, keep: jax.Array) -> jax.Array:
    """Keeps a share `keep` of the phase-encode (row) lines of k-space, zero-fills the rest."""
    mask = kspace_mask(key, image.shape[0], keep)
    return _image(_kspace(image) * mask[:, None, None])


def motion_ghosting(image: jax.Array, key: jax.Array, shift_224: jax.Array) -> jax.Array:
    """Rigid motion during part of the scan: a random share (growing with the level, up to
    half) of the phase-encode lines is acquired with the head displaced by `shift` px along
    the phase-encode axis, i.e. those lines get the phase ramp exp(-2 pi i k dy / H). The
    inconsistency shows as ghost copies along that axis."""
    height = image.shape[0]
    dy = shift_224 * height / REFERENCE_SIZE
    share = jnp.minimum(0.5, shift_224 / 30.0)
    k_lines, k_sign = jax.random.split(key)
    moved = jax.random.uniform(k_lines, (height,)) < share
    sign = jnp.where(jax.random.bernoulli(k_sign), 1.0, -1.0)
    freq = (jnp.arange(height) - height // 2) / height
    ramp = jnp.exp(-2j * jnp.pi * freq * dy * sign)
    phase = jnp.where(moved, ramp, 1.0 + 0j)
    return _image(_kspace(image) * phase[:, None, None])


def smooth_field(key: jax.Array, height: int, width: int, components: int = 6) -> jax.Array:
    """A smooth random field in [-1, 1]: sum of a few random low-frequency cosines."""
    kf, kp, ka = jax.random.split(key, 3)
    freqs = jax.random.uniform(kf, (components, 2), minval=-1.2, maxval=1.2)  # cycles per image
    phases = jax.random.uniform(kp, (components,), minval=0, maxval=2 * jnp.pi)
    amps = jax.random.uniform(ka, (components,), minval=0.3, maxval=1.0)
    y = jnp.linspace(0, 1, height)[:, None, None]
    x = jnp.linspace(0, 1, width)[None, :, None]
    field = jnp.sum(amps * jnp.cos(2 * jnp.pi * (freqs[:, 0] * y + freqs[:, 1] * x) + phases), axis=-1)
    return field / jnp.maximum(jnp.max(jnp.abs(field)), 1e-6)


def bias_field(image: jax.Array, key: jax.Array, log_amplitude: jax.Array) -> jax.Array:
    """Smooth multiplicative intensity inhomogeneity exp(a * f), f smooth in [-1, 1]."""
    field = jnp.exp(log_amplitude * smooth_field(key, *image.shape[:2]))
    return jnp.clip(image * field[..., None], 0.0, 1.0)


def contrast(image: jax.Array, key: jax.Array, factor: jax.Array) -> jax.Array:
    """Reduced contrast around the image mean (ImageNet-C contrast)."""
    del key
    mean = jnp.mean(image, axis=(0, 1), keepdims=True)
    return jnp.clip((image - mean) * factor + mean, 0.0, 1.0)


# numpy, not jnp: a module-level device array would start the JAX backend at import time,
# before launch.py / the benchmark have set XLA_FLAGS (brainjax/xla_flags.py).
_JPEG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float32).reshape(8, 8)


def _dct_matrix(n: int = 8) -> jax.Array:
    k = jnp.arange(n, dtype=jnp.float32)[:, None]
    i = jnp.arange(n, dtype=jnp.float32)[None, :]
    m = jnp.cos(jnp.pi * (2 * i + 1) * k / (2 * n)) * jnp.sqrt(2.0 / n)
    return m.at[0].multiply(1 / jnp.sqrt(2.0))


def jpeg(image: jax.Array, key: jax.Array, quality: jax.Array) -> jax.Array:
    """Baseline-JPEG luminance artifacts on device: 8x8 block DCT, quantisation with the
    standard table scaled by `quality` (libjpeg's formula), dequantisation, inverse DCT.
    No entropy coding (lossless, so irrelevant to the artifacts) and no chroma (grayscale)."""
    del key
    height, width, channels = image.shape
    ph, pw = -height % 8, -width % 8
    x = jnp.pad(image, ((0, ph), (0, pw), (0, 0)), mode="edge") * 255.0 - 128.0
    blocks = x.reshape((height + ph) // 8, 8, (width + pw) // 8, 8, channels)
    scale = jnp.where(quality < 50, 5000.0 / quality, 200.0 - 2.0 * quality)
    table = jnp.clip(jnp.floor((_JPEG_LUMA * scale + 50.0) / 100.0), 1.0, 255.0)
    d = _dct_matrix()
    hi = jax.lax.Precision.HIGHEST
    coef = jnp.einsum("ui,aibjc,vj->aubvc", d, blocks, d, precision=hi)
    coef = jnp.round(coef / table[None, :, None, :, None]) * table[None, :, None, :, None]
    out = jnp.einsum("ui,aubvc,vj->aibjc", d, coef, d, precision=hi)
    out = out.reshape(height + ph, width + pw, channels)[:height, :width]
    return jnp.clip((out + 128.0) / 255.0, 0.0, 1.0)


CORRUPTIONS: Mapping[str, Callable[[jax.Array, jax.Array, jax.Array], jax.Array]] = {
    "gaussian_noise": gaussian_noise,
    "rician_noise": rician_noise,
    "gaussian_blur": gaussian_blur,
    "motion_blur": motion_blur,
    "downsample": downsample,
    "kspace_undersample": kspace_undersample,
    "motion_ghosting": motion_ghosting,
    "bias_field": bias_field,
    "contrast": contrast,
    "jpeg": jpeg,
}
assert tuple(CORRUPTIONS) == NAMES


# The seed project's degraded copy: a random 1-3 of the basic corruptions in random order.
SEED_CHAIN = "seed_chain"
SEED_CHAIN_CFG = {"recipe": "chain", "prob": 1.0, "max_ops": 3, "gaussian_noise": (0.02, 0.2),
                  "gaussian_blur": (0.5, 5.0), "downsample": (0.3, 0.8)}


# The level at which each corruption leaves the image as it is (severity 0).
IDENTITY_LEVEL: Mapping[str, float] = {
    "gaussian_noise": 0.0, "rician_noise": 0.0, "gaussian_blur": 0.0, "motion_blur": 0.0, "downsample": 1.0,
    "kspace_undersample": 1.0, "motion_ghosting": 0.0, "bias_field": 0.0, "contrast": 1.0, "jpeg": 100.0,
}


def strength(name: str, level: jax.Array) -> jax.Array:
    """A corruption's level on one scale for all corruptions: 0 at the identity level,
    0.2 x severity at the evaluation severities 1..5 (piecewise linear between them),
    clipped to [0, 1]. Lets one quality head compare noise std, blur sigma and JPEG
    quality."""
    xs = np.array([IDENTITY_LEVEL[name], *SEVERITIES[name]], np.float32)
    ys = np.linspace(0.0, 1.0, len(xs)).astype(np.float32)
    if xs[-1] < xs[0]:  # levels that fall with severity (kept fraction, JPEG quality)
        xs, level = -xs, -jnp.asarray(level, jnp.float32)
    else:
        level = jnp.asarray(level, jnp.float32)
    return jnp.interp(level, jnp.asarray(xs), jnp.asarray(ys))


def level_for(name: str, severity: int) -> float:
    """The physical level of `name` at `severity` (1..5)."""
    if name not in SEVERITIES:
        raise UserError(f"unknown corruption {name!r}; expected one of {NAMES}")
    levels = SEVERITIES[name]
    if not 1 <= int(severity) <= len(levels):
        raise UserError(f"severity must be in 1..{len(levels)}, got {severity}")
    return levels[int(severity) - 1]


def apply(images: jax.Array, keys: jax.Array, name: str, level: jax.Array) -> jax.Array:
    """Applies corruption `name` at `level` (scalar or per-example [N]) with per-example keys.
    `seed_chain` ignores the level: the seed project's random 1-3 corruption chain."""
    if name == SEED_CHAIN:
        return augment(images, keys, SEED_CHAIN_CFG)
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


# Where each corruption arises on the way from the head to the stored file: coil
# sensitivity and patient motion during the scan, then resolution loss (k-space coverage,
# reconstruction, resampling), then noise, then display and storage. The `ordered` recipe
# applies its draw in this order.
ACQUISITION_ORDER: tuple[str, ...] = (
    "bias_field", "motion_ghosting", "motion_blur", "kspace_undersample", "gaussian_blur", "downsample",
    "rician_noise", "gaussian_noise", "contrast", "jpeg")
assert sorted(ACQUISITION_ORDER) == sorted(NAMES)


def _draw(key, names: Sequence[str], ranges: Sequence[tuple[float, float]], prob: float, max_ops: int):
    """The chain's random draw for one image: (applied, count, order, levels, op_keys).
    1..max_ops distinct corruptions (uniform count), the first `count` of a random
    permutation `order`, each at a level uniform in its range; all of it with prob `prob`."""
    k_apply, k_count, k_order, k_level, k_ops = jax.random.split(key, 5)
    n = len(names)
    count = jax.random.randint(k_count, (), 1, min(max_ops, n) + 1)
    order = jax.random.permutation(k_order, n)
    lo = jnp.array([r[0] for r in ranges], jnp.float32)
    hi = jnp.array([r[1] for r in ranges], jnp.float32)
    levels = jax.random.uniform(k_level, (n,), minval=lo, maxval=hi)
    return jax.random.bernoulli(k_apply, prob), count, order, levels, jax.random.split(k_ops, n)


def _targets(names: Sequence[str], used: jax.Array, levels: jax.Array) -> jax.Array:
    """[len(NAMES)] `strength` of each corruption applied, 0 for the others."""
    strengths = jnp.stack([strength(nm, levels[i]) for i, nm in enumerate(names)])
    return jnp.zeros(len(NAMES), jnp.float32).at[jnp.array([NAMES.index(nm) for nm in names])].set(
        jnp.where(used, strengths, 0.0))


def _ordered_one(image, key, names: Sequence[str], ranges: Sequence[tuple[float, float]], prob: float,
                 max_ops: int = 3):
    """The chain's draw (the same corruptions at the same levels for the same key), applied
    in ACQUISITION_ORDER instead of the drawn order. Each corruption is computed once per
    image instead of once per chain slot (under vmap a per-example `lax.switch` computes
    every branch): max_ops x fewer corruptions per image, ~1.9x faster over the whole
    suite."""
    applied, count, order, levels, op_keys = _draw(key, names, ranges, prob, max_ops)
    used = (jnp.argsort(order) < count) & applied
    out = image
    for nm in ACQUISITION_ORDER:
        if nm in names:
            i = names.index(nm)
            out = jnp.where(used[i], CORRUPTIONS[nm](out, op_keys[i], levels[i]), out)
    return out, _targets(names, used, levels)


def _chain_one(image, key, names: Sequence[str], ranges: Sequence[tuple[float, float]], prob: float,
               max_ops: int = 3):
    """Seed recipe for one image: with probability `prob`, a chain of 1..max_ops (uniform)
    distinct corruptions drawn from `names`, in random order, each at a level uniform in
    its range. With the seed's three corruptions this is "a random non-empty subset, in
    random order". Under vmap every branch of the switch runs, so the cost is
    max_ops x len(names) corruptions per image.

    Returns (image, targets): targets [len(NAMES)] is the `strength` of each corruption
    applied (0 for those not applied), what the scan-quality head learns to predict."""
    applied, count, order, levels, op_keys = _draw(key, names, ranges, prob, max_ops)
    branches = [functools.partial(lambda f, i, x: f(x, op_keys[i], levels[i]), CORRUPTIONS[nm], i)
                for i, nm in enumerate(names)]
    out = image
    for slot in range(min(max_ops, len(names))):
        out = jnp.where(slot < count, jax.lax.switch(order[slot], branches, out), out)
    # Corruption i ran iff its position in the random order is below the chain length.
    targets = _targets(names, (jnp.argsort(order) < count) & applied, levels)
    return jnp.where(applied, out, image), targets


def _augmix_one(image, key, names, ranges, prob, max_ops, width):
    """AugMix-style: `width` independent chains mixed with Dirichlet(1) weights, then blended
    with the original by m ~ Beta(1, 1). Targets: the chains' targets, weighted as the
    images are (a corruption's share in the final mixture times its strength)."""
    k_w, k_m, k_apply, k_chains = jax.random.split(key, 4)
    weights = jax.random.dirichlet(k_w, jnp.ones(width))
    chains = [_chain_one(image, k, names, ranges, 1.0, max_ops) for k in jax.random.split(k_chains, width)]
    mixed = jnp.tensordot(weights, jnp.stack([c[0] for c in chains]), axes=1)
    mixed_targets = jnp.tensordot(weights, jnp.stack([c[1] for c in chains]), axes=1)
    m = jax.random.beta(k_m, 1.0, 1.0)
    out = m * image + (1 - m) * mixed
    applied = jax.random.bernoulli(k_apply, prob)
    return jnp.where(applied, out, image), jnp.where(applied, (1 - m) * mixed_targets, 0.0)


def random_flip_lr(images: jax.Array, keys: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2 (axial slices are near-symmetric)."""
    flip = jax.vmap(lambda k: jax.random.bernoulli(k, 0.5))(keys)
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def augment(images: jax.Array, keys: jax.Array, cfg: Mapping) -> jax.Array:
    """Training-time degradation per `cfg` (see configs/default.py, `train_degrade`).

    cfg.flip_lr: random left-right mirroring first (geometry, not a degradation).
    cfg.recipe: 'none' | 'chain' (seed recipe: 1..max_ops corruptions in random order) |
      'ordered' (the same draw, applied in ACQUISITION_ORDER, each corruption computed once) |
      'one' (exactly one random corruption) | 'augmix' (cfg.augmix_width mixed chains).
    cfg.prob: share of images degraded. cfg.max_ops: longest chain (default 3).
    cfg.<name>: (low, high) level range per corruption (units of brainjax.degrade.SEVERITIES);
    only corruptions with a range are used.
    """
    return augment_with_targets(images, keys, cfg)[0]


def augment_with_targets(images: jax.Array, keys: jax.Array, cfg: Mapping) -> tuple[jax.Array, jax.Array]:
    """`augment`, plus what it did: targets [N, len(NAMES)], the `strength` in [0, 1] of
    every corruption applied to each example (0: not applied; all 0 <=> the image is
    unchanged apart from the flip). The scan-quality head is trained on these."""
    if cfg.get("flip_lr", False):
        keys, flip_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
        images = random_flip_lr(images, flip_keys)
    none = jnp.zeros((images.shape[0], len(NAMES)), jnp.float32)
    recipe = cfg.get("recipe", "none")
    if recipe == "none" or cfg.get("prob", 0.0) <= 0:
        return images, none
    names = [nm for nm in NAMES if cfg.get(nm) is not None]
    if not names:
        raise UserError("train_degrade has a recipe but no corruption ranges "
                        f"(set any of {NAMES} to a (low, high) pair)")
    ranges = [tuple(cfg[nm]) for nm in names]
    prob, max_ops = cfg["prob"], int(cfg.get("max_ops", 3))
    if recipe == "chain":
        fn = lambda im, k: _chain_one(im, k, names, ranges, prob, max_ops)
    elif recipe == "ordered":
        fn = lambda im, k: _ordered_one(im, k, names, ranges, prob, max_ops)
    elif recipe == "one":
        fn = lambda im, k: _chain_one(im, k, names, ranges, prob, 1)
    elif recipe == "augmix":
        fn = lambda im, k: _augmix_one(im, k, names, ranges, prob, max_ops, int(cfg.get("augmix_width", 3)))
    else:
        raise UserError(f"train_degrade.recipe must be 'none', 'chain', 'ordered', 'one' or 'augmix', got {recipe!r}")
    return jax.vmap(fn)(images, keys)
