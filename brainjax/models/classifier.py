"""Backbone + head, fed the float images that come out of the on-device degradation."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class Classifier(nn.Module):
    """images: float32 [N, H, W, C] in [0, 1], C = 1 (grayscale MRI) or 3.

    Grayscale is replicated to RGB and scaled to [0, 255], the input contract of the
    Keras-compatible backbones (which apply their own ImageNet preprocessing).
    `base_batchnorm_train` decides whether BatchNorm layers in the base use batch
    statistics in training; off by default, so a frozen (or partly unfrozen) base keeps
    the ImageNet statistics, as Keras recommends for fine-tuning.
    """

    backbone: nn.Module
    head: nn.Module
    base_batchnorm_train: bool = False

    @staticmethod
    def backbone_input(images: jnp.ndarray) -> jnp.ndarray:
        """float [0, 1], 1 or 3 channels -> float RGB in [0, 255] (the backbones' contract)."""
        x = images.astype(jnp.float32) * 255.0
        return jnp.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x

    def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = self.backbone_input(images)
        features = self.backbone(x, train=train and self.base_batchnorm_train)
        return self.head(features, train=train)
