"""VGG16 / VGG19 feature extractors with the layer names of `keras.applications`.

Input: float32 RGB in [0, 255], NHWC. The module applies Keras's `caffe` preprocessing
itself (RGB -> BGR, ImageNet BGR mean subtraction, no scaling) so that the published
ImageNet weights see exactly what Keras feeds them. Output: the final feature map, as
Keras `include_top=False, pooling=None` (block5_pool).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from brainjax.models import winograd

CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
VGG_WIDTHS = (64, 128, 256, 512, 512)
CONV_IMPLS = ("auto", "direct", "winograd")
# "auto" uses Winograd on the CPU backend for layers with at least this many output
# channels, where its matmuls outweigh its memory-bound transforms. Measured on the VGG16
# @112 frozen train step (BUILD_NOTES.md "CPU speed"): direct 23.9 img/s; Winograd from
# 256 channels 31.5, from 128 33.6, from 64 31.5. Accelerators keep the direct
# convolution (cuDNN / XLA:TPU choose their own algorithms).
WINOGRAD_MIN_FEATURES = 128


def use_winograd(impl: str, features: int) -> bool:
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
    if impl == "auto":
        return jax.default_backend() == "cpu" and features >= WINOGRAD_MIN_FEATURES
    return impl == "winograd"


class Conv3x3(nn.Module):
    """3x3, stride 1, 'SAME' convolution with exactly nn.Conv's parameters (kernel HWIO,
    bias; same initialisers), so Keras weights load unchanged; `impl` picks the algorithm
    (direct XLA convolution or Winograd F(2x2, 3x3), equal up to float32 rounding)."""

    features: int
    impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        x = x.astype(self.dtype)
        if use_winograd(self.impl, self.features):
            y = winograd.conv3x3_same(x, kernel)
        else:
            y = jax.lax.conv_general_dilated(x, kernel.astype(self.dtype), (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias.astype(self.dtype)


def caffe_preprocess(x: jnp.ndarray) -> jnp.ndarray:
    """keras.applications.imagenet_utils.preprocess_input(mode='caffe')."""
    # lax.rev, not x[..., ::-1]: the same values, and a static op that exporters (TFLite
    # with a dynamic batch) accept where strided indexing lowers to a dynamic gather
    return jax.lax.rev(x, (x.ndim - 1,)) - jnp.asarray(CAFFE_BGR_MEAN, x.dtype)


class VGG(nn.Module):
    """VGG base; `convs_per_block` (2, 2, 3, 3, 3) is VGG16, (2, 2, 4, 4, 4) VGG19;
    `conv_impl` auto | direct | winograd (see `Conv3x3`, `use_winograd`)."""

    convs_per_block: Sequence[int]
    dtype: jnp.dtype = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        del train  # no batch-dependent layers
        x = caffe_preprocess(x).astype(self.dtype)
        for block, (convs, width) in enumerate(zip(self.convs_per_block, VGG_WIDTHS), start=1):
            for conv in range(1, convs + 1):
                x = Conv3x3(width, self.conv_impl, self.dtype, name=f"block{block}_conv{conv}")(x)
                x = nn.relu(x)
            x = max_pool_2x2(x)
        return x


def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 / stride 2 'VALID' max pooling as a reshape + max: the same values as
    nn.max_pool, but its gradient is an elementwise mask instead of XLA's select-and-scatter,
    which is slow on CPU (VGG16 @112 fine-tune step 7.2 -> 8.6 img/s, frozen 31.4 -> 34.4;
    measured). Exact ties share the gradient (only at ReLU zeros, where it is 0 anyway)."""
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def vgg16(**kwargs) -> VGG:
    return VGG(convs_per_block=(2, 2, 3, 3, 3), **kwargs)


def vgg19(**kwargs) -> VGG:
    return VGG(convs_per_block=(2, 2, 4, 4, 4), **kwargs)
