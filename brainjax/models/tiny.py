"""A tiny VGG-style CNN for tests and CPU demos (trained from scratch, no weight file).

Same contract as the real backbones: float32 RGB in [0, 255] in, feature map out. It
uses only the first channel (the grayscale MRI is replicated to RGB for the ImageNet
backbones; a from-scratch net need not pay 3x for its first conv).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class TinyCNN(nn.Module):
    widths: Sequence[int] = (16, 32, 64, 128)
    convs_per_block: int = 2
    batchnorm: bool = False  # BatchNorm after each conv (set model.base_batchnorm_train to train it)
    dtype: jnp.dtype = jnp.float32
    bn_axis_name: str | None = None  # pmap axis: batch statistics over all devices in training

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        # lax.slice, not x[..., :1]: a static slice, which the TFLite converter accepts
        # with a dynamic batch dimension (indexing lowers to a dynamic gather there)
        x = (jax.lax.slice_in_dim(x, 0, 1, axis=x.ndim - 1) / 127.5 - 1.0).astype(self.dtype)
        for block, width in enumerate(self.widths, start=1):
            for conv in range(1, self.convs_per_block + 1):
                name = f"block{block}_conv{conv}"
                x = nn.Conv(width, (3, 3), padding="SAME", use_bias=not self.batchnorm, dtype=self.dtype, name=name)(x)
                if self.batchnorm:
                    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                                     axis_name=self.bn_axis_name, name=f"{name}_bn")(x)
                x = nn.relu(x)
            x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")
        return x
