"""Grad-CAM (Selvaraju et al. 2017): where in the scan the model looked for its class.

The heatmap is taken at the backbone's output, the last convolutional block of every
backbone (VGG block5, ResNet50V2 post_bn, the tiny CNN's and the small ResNet's last
stage): the gradient of the class logit with respect to that feature map, averaged over
space, weights its channels; their ReLU'd sum, upsampled to the image and scaled to
[0, 1], is the map. Pure jax on a restored model; drawing it is `plots.save_overlay`.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp


def features_and_head(model: Any, variables: Mapping, images: jax.Array) -> tuple[jax.Array, Any]:
    """(backbone feature maps [N, h, w, C], a function features -> class logits)."""
    features = model.apply(variables, images, method=lambda m, x: m.backbone(m.backbone_input(x), train=False))
    head = lambda f: model.apply(variables, f, method=lambda m, f: m.head(f, train=False))
    return features, head


def grad_cam(model: Any, variables: Mapping, images: jax.Array, classes: jax.Array | None = None) -> jax.Array:
    """Heatmaps [N, H, W] in [0, 1] for `classes` (default: the predicted class) of float
    images [N, H, W, C] in [0, 1]. An all-zero map means no positive evidence."""
    features, head = features_and_head(model, variables, images)
    logits = head(features)
    if classes is None:
        classes = jnp.argmax(logits, axis=-1)
    score = lambda f: jnp.sum(jnp.take_along_axis(head(f), classes[:, None], axis=-1))
    grads = jax.grad(score)(features.astype(jnp.float32))
    weights = jnp.mean(grads, axis=(1, 2), keepdims=True)  # [N, 1, 1, C]
    cam = jax.nn.relu(jnp.sum(weights * features.astype(jnp.float32), axis=-1))  # [N, h, w]
    n, height, width = images.shape[:3]
    cam = jax.image.resize(cam, (n, height, width), method="bilinear")
    peak = jnp.max(cam, axis=(1, 2), keepdims=True)
    return jnp.where(peak > 0, cam / jnp.maximum(peak, 1e-12), 0.0)
