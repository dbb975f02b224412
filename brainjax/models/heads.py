"""Classification heads on top of a backbone's feature map.

`baseline`: global average pool -> Dense(num_classes).
`enhanced`: global average pool -> [Dense(h, relu) -> Dropout(rate)] per hidden size ->
            Dense(num_classes); the card's recipe is hidden=(1024, 512), rate 0.5.
"""

from __future__ import annotations

from brainjax.errors import UserError

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class ClassifierHead(nn.Module):
    num_classes: int
    hidden: Sequence[int] = ()
    dropout: float = 0.0

    @nn.compact
    def __call__(self, features: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = jnp.mean(features.astype(jnp.float32), axis=(1, 2))  # GAP; head math in float32
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, name=f"dense_{i}")(x))
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="logits")(x)


def make_head(kind: str, num_classes: int, hidden: Sequence[int] = (1024, 512), dropout: float = 0.5) -> ClassifierHead:
    if kind == "baseline":
        return ClassifierHead(num_classes)
    if kind == "enhanced":
        return ClassifierHead(num_classes, tuple(hidden), dropout)
    raise UserError(f"model.head must be 'baseline' or 'enhanced', got {kind!r}")
