"""Model zoo: Keras-compatible backbones, heads and the classifier that joins them."""

from __future__ import annotations

from brainjax.errors import UserError

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from brainjax.models.classifier import Classifier
from brainjax.models.heads import ClassifierHead, make_head
from brainjax.models.resnet_v2 import ResNetV2, resnet50v2
from brainjax.models.tiny import TinyCNN
from brainjax.models.vgg import VGG, vgg16, vgg19

BACKBONES: Mapping[str, Callable[..., nn.Module]] = {
    "vgg16": vgg16,
    "vgg19": vgg19,
    "resnet50v2": resnet50v2,
    "tiny": TinyCNN,
}


def make_backbone(name: str, dtype: Any = jnp.float32, **kwargs) -> nn.Module:
    if name not in BACKBONES:
        raise UserError(f"model.backbone must be one of {sorted(BACKBONES)}, got {name!r}")
    return BACKBONES[name](dtype=dtype, **kwargs)


def create_model(model_cfg: Mapping[str, Any], num_classes: int) -> Classifier:
    """Builds the classifier described by a config's `model` section."""
    dtype = jnp.dtype(model_cfg.get("dtype", "float32"))
    # Per-backbone options live under the backbone's name (e.g. config.model.tiny.widths).
    backbone_options = dict(model_cfg.get(model_cfg["backbone"], None) or {})
    return Classifier(
        backbone=make_backbone(model_cfg["backbone"], dtype=dtype, **backbone_options),
        head=make_head(model_cfg["head"], num_classes, model_cfg.get("head_hidden", (1024, 512)),
                       model_cfg.get("dropout", 0.5)),
        base_batchnorm_train=bool(model_cfg.get("base_batchnorm_train", False)),
    )


def init_variables(model: nn.Module, rng: jax.Array, image_shape: tuple[int, int, int]) -> dict:
    """Initial variables ({'params', maybe 'batch_stats'}) for images of `image_shape`."""
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    return dict(jax.jit(lambda r: model.init(r, dummy, train=False))(rng))


__all__ = [
    "BACKBONES", "Classifier", "ClassifierHead", "ResNetV2", "TinyCNN", "VGG",
    "create_model", "init_variables", "make_backbone", "make_head", "resnet50v2", "vgg16", "vgg19",
]
