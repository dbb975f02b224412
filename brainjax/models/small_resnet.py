"""A small pre-activation ResNet for CPU-trainable real-data runs (trained from scratch).

The tiny CNN (configs/default.py) is a plain conv stack at 64 px; on Sartaj it fits the
training source and does not carry to the Testing source (BUILD_NOTES, issue 13). This
is the next size up that a 2-core CPU trains in ~30 minutes at 96-128 px: a stride-2
stem, then stages of ResNetV2 basic blocks (BN-ReLU-conv x2, identity or 1x1 projection
shortcut), stride 2 between stages, BN-ReLU at the end. Same contract as every backbone:
float32 RGB in [0, 255] in, feature map out; like the tiny CNN it reads the first
channel only (grayscale MRI).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class BasicBlock(nn.Module):
    """ResNetV2 basic block (two 3x3 convs, pre-activation)."""

    width: int
    stride: int = 1
    dtype: jnp.dtype = jnp.float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                                       axis_name=self.bn_axis_name, name=name)
        preact = nn.relu(bn("preact_bn")(x))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.width:
            shortcut = nn.Conv(self.width, (1, 1), strides=self.stride, use_bias=False, dtype=self.dtype,
                               name="shortcut_conv")(preact)
        y = nn.Conv(self.width, (3, 3), strides=self.stride, padding="SAME", use_bias=False, dtype=self.dtype,
                    name="conv1")(preact)
        y = nn.relu(bn("bn1")(y))
        y = nn.Conv(self.width, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype, name="conv2")(y)
        return shortcut + y


class SmallResNet(nn.Module):
    widths: Sequence[int] = (16, 32, 64, 128)
    blocks_per_stage: int = 1
    stem_width: int = 16
    dtype: jnp.dtype = jnp.float32
    bn_axis_name: str | None = None  # pmap axis: batch statistics over all devices in training

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        # lax.slice_in_dim, not x[..., :1]: static, so exports with a dynamic batch
        x = (jax.lax.slice_in_dim(x, 0, 1, axis=x.ndim - 1) / 127.5 - 1.0).astype(self.dtype)
        x = nn.Conv(self.stem_width, (3, 3), strides=2, padding="SAME", use_bias=False, dtype=self.dtype,
                    name="stem_conv")(x)
        for stage, width in enumerate(self.widths, start=1):
            for block in range(1, self.blocks_per_stage + 1):
                stride = 2 if (block == 1 and stage > 1) else 1
                x = BasicBlock(width, stride=stride, dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                               name=f"stage{stage}_block{block}")(x, train)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                         axis_name=self.bn_axis_name, name="post_bn")(x)
        return nn.relu(x)
