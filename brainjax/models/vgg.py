"""VGG16 / VGG19 feature extractors with the layer names of `keras.applications`.

Input: float32 RGB in [0, 255], NHWC. The module applies Keras's `caffe` preprocessing
itself (RGB -> BGR, ImageNet BGR mean subtraction, no scaling) so that the published
ImageNet weights see exactly what Keras feeds them. Output: the final feature map, as
Keras `include_top=False, pooling=None` (block5_pool).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
VGG_WIDTHS = (64, 128, 256, 512, 512)


def caffe_preprocess(x: jnp.ndarray) -> jnp.ndarray:
    """keras.applications.imagenet_utils.preprocess_input(mode='caffe')."""
    return x[..., ::-1] - jnp.asarray(CAFFE_BGR_MEAN, x.dtype)


class VGG(nn.Module):
    """VGG base; `convs_per_block` (2, 2, 3, 3, 3) is VGG16, (2, 2, 4, 4, 4) VGG19."""

    convs_per_block: Sequence[int]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        del train  # no batch-dependent layers
        x = caffe_preprocess(x).astype(self.dtype)
        for block, (convs, width) in enumerate(zip(self.convs_per_block, VGG_WIDTHS), start=1):
            for conv in range(1, convs + 1):
                x = nn.Conv(width, (3, 3), padding="SAME", dtype=self.dtype, name=f"block{block}_conv{conv}")(x)
                x = nn.relu(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        return x


def vgg16(**kwargs) -> VGG:
    return VGG(convs_per_block=(2, 2, 3, 3, 3), **kwargs)


def vgg19(**kwargs) -> VGG:
    return VGG(convs_per_block=(2, 2, 4, 4, 4), **kwargs)
