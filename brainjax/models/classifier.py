"""Backbone + head, fed the float images that come out of the on-device degradation."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from brainjax import intensity


class Classifier(nn.Module):
    """images: float32 [N, H, W, C] in [0, 1], C = 1 (grayscale MRI) or 3.

    The input path: per-image intensity standardisation (`standardize`, see
    brainjax/intensity.py; it follows any degradation, so a corrupted scan is
    standardised like a clean one), mapped back to [0, 1], then grayscale replicated to
    RGB and scaled to [0, 255], the input contract of the Keras-compatible backbones
    (which apply their own ImageNet preprocessing). Being part of the model, it also runs
    in `--mode=predict` and in exported models.
    `base_batchnorm_train` decides whether BatchNorm layers in the base use batch
    statistics in training; off by default, so a frozen (or partly unfrozen) base keeps
    the ImageNet statistics, as Keras recommends for fine-tuning.
    """

    backbone: nn.Module
    head: nn.Module
    base_batchnorm_train: bool = False
    standardize: str = "none"
    standardize_percentiles: Sequence[float] = (0.5, 99.5)
    # Scan-quality head (config quality.enabled): from the same backbone features, one
    # logit per corruption of brainjax.degrade.NAMES, trained on the strength of each
    # corruption the training step applied (degrade.augment_with_targets).
    quality_head: nn.Module | None = None

    def backbone_input(self, images: jnp.ndarray) -> jnp.ndarray:
        """float [0, 1], 1 or 3 channels -> standardised float RGB in [0, 255]."""
        x = intensity.model_input(images, self.standardize, self.standardize_percentiles) * 255.0
        return jnp.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x

    def __call__(self, images: jnp.ndarray, train: bool = False, with_quality: bool = False):
        """Class logits [N, classes]; with_quality=True: (logits, quality logits [N, K])."""
        x = self.backbone_input(images)
        features = self.backbone(x, train=train and self.base_batchnorm_train)
        # The pooled features, for out-of-distribution scores (evaluators/ood.py): kept
        # only when the caller makes "intermediates" mutable, free otherwise.
        self.sow("intermediates", "pooled", jnp.mean(features.astype(jnp.float32), axis=(1, 2)))
        logits = self.head(features, train=train)
        if self.quality_head is None:
            if with_quality:
                raise ValueError("this model has no quality head (config quality.enabled=False)")
            return logits
        # Always built (so init creates its parameters); unused outputs cost nothing under jit.
        quality_logits = self.quality_head(features, train=train)
        return (logits, quality_logits) if with_quality else logits


def quality_score(quality_logits: jnp.ndarray) -> jnp.ndarray:
    """Scan quality in [0, 1] per example: 1 - the strongest predicted corruption
    strength (1 = looks clean, 0 = at least one corruption at severity 5 or worse)."""
    import jax

    return 1.0 - jnp.max(jax.nn.sigmoid(quality_logits.astype(jnp.float32)), axis=-1)
