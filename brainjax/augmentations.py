"""Training-time appearance augmentations, on device, per example (config `train_augment`).

Scans from another hospital differ from the training scans in intensity response
(gamma, brightness, contrast), coil inhomogeneity (bias field) and head position and
size. These augmentations draw such a variation per example, inside the jitted train
step, from the example's own key (so a run is reproducible and independent of the
device layout, like `degrade.augment`). They act on the clean image *before* the
acquisition corruptions of `train_degrade`: first the scan varies, then its quality.

dm-pix supplies the ops (`adjust_gamma`, `adjust_brightness`, `adjust_contrast`,
`affine_transform`); the bias field is brainjax's own corruption (`degrade.bias_field`).

`gin` goes further than a monotone intensity curve: another hospital may use another
sequence (T1 with contrast vs T2/FLAIR), which re-orders tissue brightness, and a model
trained on one source learns its brightness as a label shortcut. GIN (global intensity
non-linear augmentation; Ouyang et al., "Causality-inspired single-source domain
generalization for medical image segmentation", IEEE TMI 2022) passes the image through a
shallow convolutional network with fresh random weights per example (4 layers, 2 channels,
kernel 1 or 3, leaky ReLU; weights and shifts N(0, 1)) and mixes the result with the image
(alpha ~ U(gin)): tissue contrasts change non-monotonically, even invert, while shapes stay.
Here it reads the head's z-scores (so the random shifts act at the tissue scale), is
rescaled to [0, 1] between its 1st and 99th percentiles over the head, and keeps the
black background of a scan.

cfg fields (a field that is None or absent turns its op off):
  prob: probability that each op is applied to an image (independently per op);
  gamma: (low, high) exponent; brightness: (low, high) additive delta on [0, 1];
  contrast: (low, high) factor around the image mean; bias_field: (low, high) log amplitude;
  rotate_deg: max |rotation| in degrees; scale: (low, high) zoom; translate: max |shift|
  as a fraction of the side; gin: (low, high) mixing weight alpha of the random network;
  contrast_remap: the probability (its own, not `prob`) of a random smooth, possibly
  non-monotonic intensity map over the head (`contrast_remap`), for sequences never seen
  in training: T2 makes CSF bright and white matter dark where T1 does the opposite, which
  gamma, brightness and contrast (monotone maps) cannot imitate.
Output stays in [0, 1].
"""

from __future__ import annotations

from typing import Mapping

import dm_pix as pix
import jax
import jax.numpy as jnp

from brainjax import degrade, intensity
from brainjax.errors import UserError

INTENSITY_OPS: tuple[str, ...] = ("gamma", "brightness", "contrast", "bias_field")
GEOMETRY_FIELDS: tuple[str, ...] = ("rotate_deg", "scale", "translate")
FIELDS: tuple[str, ...] = ("prob",) + INTENSITY_OPS + GEOMETRY_FIELDS + ("gin", "contrast_remap")
# GIN's network, as in the paper: 4 layers, 2 intermediate channels, kernel 1 or 3.
GIN_LAYERS = 4
GIN_CHANNELS = 2
GIN_PERCENTILES = (1.0, 99.0)
# gin's keys are folded in apart from the other ops' split, so configs without gin draw
# exactly what they drew before it existed.
_GIN_STREAM = 0x61A
# contrast_remap: a random curve through this many control points; its own key stream.
REMAP_POINTS = 5
REMAP_PERCENTILES = (1.0, 99.0)
_REMAP_STREAM = 0x7E3


def affine_matrix(angle: jax.Array, scale: jax.Array, shift: jax.Array, height: int, width: int
                  ) -> tuple[jax.Array, jax.Array]:
    """(matrix, offset) for `pix.affine_transform` on an [H, W, C] image: rotation by
    `angle` (radians) and zoom by `scale` about the centre, then a shift of `shift`
    ([dy, dx], pixels). affine_transform maps *output* coordinates to input ones, hence
    the inverse rotation and 1/scale."""
    c, s = jnp.cos(angle) / scale, jnp.sin(angle) / scale
    matrix = jnp.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    centre = jnp.array([(height - 1) / 2.0, (width - 1) / 2.0, 0.0])
    offset = centre - matrix @ centre - jnp.concatenate([shift, jnp.zeros(1)])
    return matrix, offset


def _uniform(key: jax.Array, bounds) -> jax.Array:
    low, high = (float(b) for b in bounds)
    return jax.random.uniform(key, (), minval=low, maxval=high)


def _geometry(image: jax.Array, key: jax.Array, cfg: Mapping) -> jax.Array:
    k_angle, k_scale, k_shift = jax.random.split(key, 3)
    height, width = image.shape[:2]
    max_angle = jnp.deg2rad(float(cfg.get("rotate_deg") or 0.0))
    angle = jax.random.uniform(k_angle, (), minval=-max_angle, maxval=max_angle)
    scale = _uniform(k_scale, cfg.get("scale") or (1.0, 1.0))
    max_shift = float(cfg.get("translate") or 0.0) * jnp.array([height, width], jnp.float32)
    shift = jax.random.uniform(k_shift, (2,), minval=-max_shift, maxval=max_shift)
    matrix, offset = affine_matrix(angle, scale, shift, height, width)
    # Outside the field of view is background (0), as in a scan.
    return pix.affine_transform(image, matrix, offset=offset, order=1, mode="constant", cval=0.0)


def _intensity(image: jax.Array, op: str, key: jax.Array, bounds) -> jax.Array:
    k_level, k_op = jax.random.split(key)
    level = _uniform(k_level, bounds)
    if op == "gamma":
        return pix.adjust_gamma(image, level, assume_in_bounds=True)
    if op == "brightness":
        return pix.adjust_brightness(image, level)
    if op == "contrast":
        return pix.adjust_contrast(image, level)
    return degrade.bias_field(image, k_op, level)


def _gin_layer(x: jax.Array, key: jax.Array, out_channels: int, activate: bool) -> jax.Array:
    """One random layer on [H, W, C_in]: a 3x3 (or, half the time, 1x1) convolution with
    N(0, 1) weights and shifts, then leaky ReLU."""
    k_w, k_b, k_size = jax.random.split(key, 3)
    kernel = jax.random.normal(k_w, (3, 3, x.shape[-1], out_channels))
    centre_only = jnp.zeros((3, 3, 1, 1)).at[1, 1].set(1.0)
    kernel = jnp.where(jax.random.bernoulli(k_size), kernel * centre_only, kernel)
    y = jax.lax.conv_general_dilated(x[None], kernel, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
    y = y + jax.random.normal(k_b, (out_channels,))
    return jax.nn.leaky_relu(y) if activate else y


def gin(image: jax.Array, key: jax.Array, alpha: jax.Array) -> jax.Array:
    """GIN on one image [H, W, C] in [0, 1] (module doc): alpha * random_network(image)
    + (1 - alpha) * image, the network's output rescaled to [0, 1] over the head and the
    background kept black. Channels are averaged first (MRI slices are grey)."""
    weights = intensity.foreground_weights(image)
    z = intensity.standardize(image[None], "zscore_foreground")[0]
    x = jnp.mean(z, axis=-1, keepdims=True)
    keys = jax.random.split(key, GIN_LAYERS)
    for i in range(GIN_LAYERS):
        last = i == GIN_LAYERS - 1
        x = _gin_layer(x, keys[i], 1 if last else GIN_CHANNELS, activate=not last)
    head = jnp.mean(weights, axis=-1, keepdims=True) > 0.5
    # Robust range over the head: a min/max would let one edge pixel blacken the slice.
    low, high = jnp.nanpercentile(jnp.where(head, x, jnp.nan), jnp.array(GIN_PERCENTILES))
    remapped = jnp.clip((x - low) / jnp.maximum(high - low, 1e-6), 0.0, 1.0) * weights
    return alpha * remapped + (1.0 - alpha) * image


def remap_curve(x: jax.Array, ys: jax.Array) -> jax.Array:
    """The smooth curve through (linspace(0, 1, K), ys) at x in [0, 1]: cosine
    interpolation between neighbouring control points (continuous, flat at each point,
    non-monotonic wherever the ys are)."""
    k = ys.shape[0]
    t = jnp.clip(x, 0.0, 1.0) * (k - 1)
    i = jnp.clip(jnp.floor(t).astype(jnp.int32), 0, k - 2)
    w = (1.0 - jnp.cos(jnp.pi * (t - i))) / 2.0
    return ys[i] * (1.0 - w) + ys[i + 1] * w


def contrast_remap(image: jax.Array, key: jax.Array) -> jax.Array:
    """A random smooth intensity map over the head of one image [H, W, C] in [0, 1]: the
    head's intensities (rescaled to [0, 1] between their 1st and 99th percentiles) go
    through `remap_curve` with K control points drawn U(0, 1) (inverted half the time), so
    tissue brightness order can change as it does between T1 and T2; the background stays
    black (the curve is weighted by the soft foreground mask)."""
    k_y, k_invert = jax.random.split(key)
    weights = intensity.foreground_weights(image)
    grey = jnp.mean(image, axis=-1, keepdims=True)
    head = jnp.mean(weights, axis=-1, keepdims=True) > 0.5
    low, high = jnp.nanpercentile(jnp.where(head, grey, jnp.nan), jnp.array(REMAP_PERCENTILES))
    x = (grey - low) / jnp.maximum(high - low, 1e-6)
    ys = jax.random.uniform(k_y, (REMAP_POINTS,))
    ys = jnp.where(jax.random.bernoulli(k_invert), 1.0 - ys, ys)
    return jnp.clip(remap_curve(x, ys) * weights, 0.0, 1.0)


def augment_one(image: jax.Array, key: jax.Array, cfg: Mapping) -> jax.Array:
    """One image [H, W, C] in [0, 1]: affine (if any geometry field is set), then gin
    (if set: the sequence's contrast), then contrast_remap (with its own probability),
    then each intensity op in a fixed order, each with probability cfg.prob; clipped to
    [0, 1]."""
    prob = float(cfg.get("prob", 0.0))
    keys = jax.random.split(key, 2 * (1 + len(INTENSITY_OPS)))
    out = image
    remap = float(cfg.get("contrast_remap") or 0.0)
    if prob <= 0:  # contrast_remap alone
        return _remapped(out, key, remap)
    if any(cfg.get(f) for f in GEOMETRY_FIELDS):
        moved = _geometry(out, keys[0], cfg)
        out = jnp.where(jax.random.bernoulli(keys[1], prob), moved, out)
    if cfg.get("gin") is not None:
        k_alpha, k_net, k_apply = jax.random.split(jax.random.fold_in(key, _GIN_STREAM), 3)
        mixed = jnp.clip(gin(out, k_net, _uniform(k_alpha, cfg["gin"])), 0.0, 1.0)
        out = jnp.where(jax.random.bernoulli(k_apply, prob), mixed, out)
    out = _remapped(out, key, remap)
    for i, op in enumerate(INTENSITY_OPS, start=1):
        if cfg.get(op) is None:
            continue
        changed = jnp.clip(_intensity(out, op, keys[2 * i], cfg[op]), 0.0, 1.0)
        out = jnp.where(jax.random.bernoulli(keys[2 * i + 1], prob), changed, out)
    return jnp.clip(out, 0.0, 1.0)


def _remapped(image: jax.Array, key: jax.Array, prob: float) -> jax.Array:
    """contrast_remap with probability `prob`, from its own key stream (folded in apart
    from the other ops' split, so configs without it draw exactly what they drew before)."""
    if prob <= 0:
        return image
    k_map, k_apply = jax.random.split(jax.random.fold_in(key, _REMAP_STREAM))
    return jnp.where(jax.random.bernoulli(k_apply, prob), contrast_remap(image, k_map), image)


def apply(images: jax.Array, keys: jax.Array, cfg: Mapping | None) -> jax.Array:
    """Augments a batch [N, H, W, C] in [0, 1] with one key per example (see module doc).
    A missing cfg, or prob <= 0 and no contrast_remap, returns the images unchanged."""
    cfg = dict(cfg or {})
    check_config(cfg)
    if float(cfg.get("prob", 0.0)) <= 0 and not float(cfg.get("contrast_remap") or 0.0):
        return images
    return jax.vmap(lambda im, k: augment_one(im, k, cfg))(images, keys)


def check_config(cfg: Mapping) -> None:
    """A clear error for a misspelt field or a malformed range (not a deep trace)."""
    unknown = sorted(set(cfg) - set(FIELDS))
    if unknown:
        raise UserError(f"train_augment has unknown field(s) {unknown}; known: {list(FIELDS)}")
    for name in ("gamma", "brightness", "contrast", "bias_field", "scale", "gin"):
        value = cfg.get(name)
        if value is not None and (len(tuple(value)) != 2 or float(value[0]) > float(value[1])):
            raise UserError(f"train_augment.{name} must be a (low, high) pair with low <= high, got {value!r}")
    if cfg.get("gamma") is not None and float(cfg["gamma"][0]) <= 0:
        raise UserError(f"train_augment.gamma must be positive, got {cfg['gamma']!r}")
    remap = cfg.get("contrast_remap")
    if remap is not None and not 0.0 <= float(remap) <= 1.0:
        raise UserError(f"train_augment.contrast_remap is a probability in [0, 1], got {remap!r}")
    if cfg.get("gin") is not None and not 0.0 <= float(cfg["gin"][0]) <= float(cfg["gin"][1]) <= 1.0:
        raise UserError(f"train_augment.gin is a mixing weight range within [0, 1], got {cfg['gin']!r}")
