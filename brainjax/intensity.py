"""Per-image intensity standardisation, on device: MRI intensities have no absolute scale.

The same tissue comes out brighter or darker, with more or less contrast, depending on
scanner, coil, sequence and gain. Standard MRI pipelines (nnU-Net, TorchIO's
`ZNormalization` / `RescaleIntensity`) therefore normalise every image before the network
sees it; brainjax does it as the first step of the model's input path
(`models.Classifier`), so training, evaluation under corruptions, `--mode=predict` and
exported models all see the same standardised input.

Methods (config field `model.standardize`):
  * 'none': the image as it is (the pre-issue-13 behaviour);
  * 'zscore': (x - mean) / std over the whole image;
  * 'zscore_foreground': mean and std over a foreground (head) mask estimated from the
    image itself (threshold halfway between the image's minimum and its mean), so the
    share of black background does not change the scale;
  * 'percentile': robust rescaling of [p_low, p_high] (default 0.5 and 99.5 percent) to
    [0, 1].

Every method is invariant to a positive affine intensity change a*x + b (a > 0), up to
float error: the statistics (mean, std, min, percentiles) move with the image.

The output is mapped back to the unit range [0, 1] (`to_unit_range`) so the backbones'
input contract (RGB in [0, 255], Keras preprocessing inside) still holds: pretrained
ImageNet features see an image with ordinary brightness and contrast, not z-scores.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from brainjax.errors import UserError

METHODS: tuple[str, ...] = ("none", "zscore", "zscore_foreground", "percentile")
# z-scores map to the unit range as 0.5 + Z_SCALE * z: +-2.5 std fill [0, 1].
Z_SCALE = 0.2
_EPS = 1e-6


def _threshold_and_width(image: jax.Array) -> tuple[jax.Array, jax.Array]:
    lo = jnp.min(image)
    spread = jnp.maximum(jnp.mean(image) - lo, _EPS)
    return lo + 0.5 * spread, 0.1 * spread


def foreground_mask(image: jax.Array) -> jax.Array:
    """Boolean mask of the head in one image [H, W, C]: pixels brighter than halfway
    between the image's minimum and its mean. Affine-equivariant (a > 0), so the mask of
    a*x + b is the mask of x; the dark background of an MRI slice falls below it."""
    threshold, _ = _threshold_and_width(image)
    return image > threshold


def foreground_weights(image: jax.Array) -> jax.Array:
    """A soft `foreground_mask` in [0, 1] (a sigmoid 10% of the min-to-mean spread wide),
    used for the statistics: a hard threshold flips pixels that sit on it under float
    rounding of a*x + b, a soft one moves them by float error only."""
    threshold, width = _threshold_and_width(image)
    return jax.nn.sigmoid((image - threshold) / width)


def _zscore(image: jax.Array, weights: jax.Array | None) -> jax.Array:
    if weights is None:
        mean, std = jnp.mean(image), jnp.std(image)
    else:
        w = weights
        count = jnp.maximum(jnp.sum(w), 1.0)
        mean = jnp.sum(w * image) / count
        std = jnp.sqrt(jnp.sum(w * (image - mean) ** 2) / count)
    # A constant image (std 0) maps to 0, not to inf/nan.
    return (image - mean) / jnp.maximum(std, _EPS)


def _percentile(image: jax.Array, percentiles: Sequence[float]) -> jax.Array:
    low, high = jnp.percentile(image, jnp.asarray(percentiles, jnp.float32))
    return jnp.clip((image - low) / jnp.maximum(high - low, _EPS), 0.0, 1.0)


def standardize(images: jax.Array, method: str = "zscore",
                percentiles: Sequence[float] = (0.5, 99.5)) -> jax.Array:
    """Standardised images [N, H, W, C], each image on its own statistics.

    'zscore' / 'zscore_foreground' return z-scores; 'percentile' returns [0, 1];
    'none' returns the input. Use `to_unit_range` for the backbone input range."""
    check_method(method)
    images = images.astype(jnp.float32)
    if method == "none":
        return images
    if method == "percentile":
        return jax.vmap(lambda im: _percentile(im, percentiles))(images)
    if method == "zscore_foreground":
        return jax.vmap(lambda im: _zscore(im, foreground_weights(im)))(images)
    return jax.vmap(lambda im: _zscore(im, None))(images)


def to_unit_range(standardized: jax.Array, method: str) -> jax.Array:
    """Standardised images -> [0, 1], the range the backbones expect before x255.

    z-scores become 0.5 + 0.2 z, clipped (+-2.5 std fill the range): a mid-grey image
    of ordinary contrast, which keeps ImageNet features meaningful for the pretrained
    backbones. Percentile output is already in [0, 1]."""
    if method in ("zscore", "zscore_foreground"):
        return jnp.clip(0.5 + Z_SCALE * standardized, 0.0, 1.0)
    return standardized


def model_input(images: jax.Array, method: str, percentiles: Sequence[float] = (0.5, 99.5)) -> jax.Array:
    """The standardised image in [0, 1] that a model's backbone sees (x255 after)."""
    return to_unit_range(standardize(images, method, percentiles), method)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise UserError(f"model.standardize must be one of {METHODS}, got {method!r}")
