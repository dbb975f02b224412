"""ResNet50V2 feature extractor with the layer names of `keras.applications`.

Pre-activation bottleneck blocks exactly as keras/src/applications/resnet_v2.py builds
them: explicit zero padding before the 7x7 stem and before each strided 3x3 conv (so odd
input sizes round like Keras), a 1x1 max-pool shortcut on strided identity blocks, the
stride on the *last* block of each stack, and `post_bn` + relu at the end. Input: float32
RGB in [0, 255]; Keras `tf` preprocessing (scale to [-1, 1]) is applied here.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

BN_EPSILON = 1.001e-5
BN_MOMENTUM = 0.99  # Keras default


def tf_preprocess(x: jnp.ndarray) -> jnp.ndarray:
    """keras.applications.imagenet_utils.preprocess_input(mode='tf')."""
    return x / 127.5 - 1.0


def _pad(x: jnp.ndarray, amount: int) -> jnp.ndarray:
    return jnp.pad(x, ((0, 0), (amount, amount), (amount, amount), (0, 0)))


class PreactBottleneck(nn.Module):
    """keras resnet_v2 `block2`."""

    filters: int
    stride: int = 1
    conv_shortcut: bool = False
    dtype: jnp.dtype = jnp.float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                                       epsilon=BN_EPSILON, dtype=self.dtype, axis_name=self.bn_axis_name,
                                       name=name)
        preact = nn.relu(bn("preact_bn")(x))
        if self.conv_shortcut:
            shortcut = nn.Conv(4 * self.filters, (1, 1), strides=self.stride, dtype=self.dtype, name="0_conv")(preact)
        elif self.stride > 1:
            # MaxPooling2D(1, strides=stride); lax.slice (static) exports everywhere
            shortcut = jax.lax.slice(x, (0, 0, 0, 0), x.shape, (1, self.stride, self.stride, 1))
        else:
            shortcut = x
        y = nn.Conv(self.filters, (1, 1), use_bias=False, dtype=self.dtype, name="1_conv")(preact)
        y = nn.relu(bn("1_bn")(y))
        y = nn.Conv(self.filters, (3, 3), strides=self.stride, padding="VALID", use_bias=False,
                    dtype=self.dtype, name="2_conv")(_pad(y, 1))
        y = nn.relu(bn("2_bn")(y))
        y = nn.Conv(4 * self.filters, (1, 1), dtype=self.dtype, name="3_conv")(y)
        return shortcut + y


class ResNetV2(nn.Module):
    """ResNetV2 base; `blocks_per_stack` (3, 4, 6, 3) is ResNet50V2."""

    blocks_per_stack: Sequence[int]
    dtype: jnp.dtype = jnp.float32
    bn_axis_name: str | None = None  # pmap axis: batch statistics over all devices in training

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = tf_preprocess(x).astype(self.dtype)
        x = nn.Conv(64, (7, 7), strides=2, padding="VALID", dtype=self.dtype, name="conv1_conv")(_pad(x, 3))
        x = nn.max_pool(_pad(x, 1), window_shape=(3, 3), strides=(2, 2), padding="VALID")
        widths = (64, 128, 256, 512)
        for stack, (blocks, width) in enumerate(zip(self.blocks_per_stack, widths), start=2):
            last_stride = 1 if stack == 1 + len(widths) else 2
            for block in range(1, blocks + 1):
                x = PreactBottleneck(
                    width,
                    stride=last_stride if block == blocks else 1,
                    conv_shortcut=block == 1,
                    dtype=self.dtype,
                    bn_axis_name=self.bn_axis_name,
                    name=f"conv{stack}_block{block}",
                )(x, train)
        x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                         dtype=self.dtype, axis_name=self.bn_axis_name, name="post_bn")(x)
        return nn.relu(x)


def resnet50v2(**kwargs) -> ResNetV2:
    return ResNetV2(blocks_per_stack=(3, 4, 6, 3), **kwargs)
