"""Model zoo: Keras-compatible backbones, heads and the classifier that joins them."""

from __future__ import annotations

from brainjax.errors import UserError

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from brainjax import degrade, intensity
from brainjax.models.classifier import Classifier, quality_score
from brainjax.models import keras_weights
from brainjax.models.heads import ClassifierHead, make_head
from brainjax.models.resnet_v2 import ResNetV2, resnet50v2
from brainjax.models.small_resnet import SmallResNet
from brainjax.models.tiny import TinyCNN
from brainjax.models.vgg import VGG, vgg16, vgg19

BACKBONES: Mapping[str, Callable[..., nn.Module]] = {
    "vgg16": vgg16,
    "vgg19": vgg19,
    "resnet50v2": resnet50v2,
    "tiny": TinyCNN,
    "small_resnet": SmallResNet,
}


def make_backbone(name: str, dtype: Any = jnp.float32, **kwargs) -> nn.Module:
    if name not in BACKBONES:
        raise UserError(f"model.backbone must be one of {sorted(BACKBONES)}, got {name!r}")
    return BACKBONES[name](dtype=dtype, **kwargs)


# Backbones with BatchNorm: their batch statistics can be synchronised over a device axis.
BATCHNORM_BACKBONES = ("tiny", "resnet50v2", "small_resnet")


def make_quality_head(quality_cfg: Mapping[str, Any] | None) -> ClassifierHead | None:
    """The scan-quality head (one logit per corruption of degrade.NAMES) if enabled."""
    if not quality_cfg or not quality_cfg.get("enabled", False):
        return None
    return ClassifierHead(len(degrade.NAMES), tuple(quality_cfg.get("hidden", (64,))), 0.0)


def create_model(model_cfg: Mapping[str, Any], num_classes: int, *, bn_axis_name: str | None = None,
                 frozen_base: bool = False) -> Classifier:
    """Builds the classifier described by a config's `model` section.

    bn_axis_name: the pmap axis of the train step, so BatchNorm in training normalises
    with (and updates) statistics over the whole global batch, whatever the device split.
    frozen_base: the base trains no parameter, so its BatchNorm runs in inference mode and
    its statistics never change (Keras semantics for a frozen base), whatever
    model.base_batchnorm_train says. Parameters are the same for every choice.
    model_cfg.quality_head.enabled: a scan-quality head under 'quality_head' (see Classifier)."""
    dtype = jnp.dtype(model_cfg.get("dtype", "float32"))
    # Configs and checkpoints from before intensity standardisation existed mean 'none'.
    standardize = model_cfg.get("standardize", "none")
    intensity.check_method(standardize)
    # Per-backbone options live under the backbone's name (e.g. config.model.tiny.widths).
    backbone_options = dict(model_cfg.get(model_cfg["backbone"], None) or {})
    if bn_axis_name is not None and model_cfg["backbone"] in BATCHNORM_BACKBONES:
        backbone_options["bn_axis_name"] = bn_axis_name
    return Classifier(
        backbone=make_backbone(model_cfg["backbone"], dtype=dtype, **backbone_options),
        head=make_head(model_cfg["head"], num_classes, model_cfg.get("head_hidden", (1024, 512)),
                       model_cfg.get("dropout", 0.5)),
        base_batchnorm_train=bool(model_cfg.get("base_batchnorm_train", False)) and not frozen_base,
        standardize=standardize,
        quality_head=make_quality_head(model_cfg.get("quality_head")),
        standardize_percentiles=tuple(model_cfg.get("standardize_percentiles", (0.5, 99.5))),
    )


def pretrained(arch: str, weights: str = "imagenet", weights_dir: str | None = None) -> tuple[nn.Module, dict]:
    """(backbone module, variables) with the published Keras weights: `module.apply(
    variables, rgb_0_255, train=False)` returns what Keras `include_top=False` returns on
    `preprocess_input(rgb)`. `weights`: 'imagenet' (looked up in `weights_dir`,
    $BRAINJAX_WEIGHTS_DIR, ~/.keras/models, then downloaded) or a file path."""
    module = make_backbone(arch)
    return module, keras_weights.backbone_variables(module, arch, weights, weights_dir)


def init_variables(model: nn.Module, rng: jax.Array, image_shape: tuple[int, int, int]) -> dict:
    """Initial variables ({'params', maybe 'batch_stats'}) for images of `image_shape`."""
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    variables = dict(jax.jit(lambda r: model.init(r, dummy, train=False))(rng))
    variables.pop("intermediates", None)  # what the Classifier sows (pooled features), not a variable
    return variables


__all__ = [
    "BACKBONES", "Classifier", "ClassifierHead", "ResNetV2", "SmallResNet", "TinyCNN", "VGG",
    "create_model", "init_variables", "make_backbone", "make_head", "make_quality_head", "quality_score", "pretrained", "resnet50v2", "vgg16", "vgg19",
]
