"""Which parameters train: regex partitions over '/'-joined parameter paths.

The config lists regexes (e.g. `^head/` for a frozen base, `.*` for full fine-tuning,
`^head/|^backbone/block5_` for partial unfreezing). The train step differentiates only
with respect to the trainable subtree, so no backward pass runs through the frozen base,
and the optimizer is an `optax.partition` whose frozen branch is `set_to_zero` (no update,
no optimizer state).
"""

from __future__ import annotations

from brainjax.errors import UserError

import re
from typing import Any, Sequence

import optax
from flax import traverse_util

TRAINABLE, FROZEN = "trainable", "frozen"


def path_names(params: Any) -> list[str]:
    return ["/".join(k) for k in traverse_util.flatten_dict(params)]


def labels(params: Any, patterns: Sequence[str]) -> Any:
    """A pytree like `params` with 'trainable' / 'frozen' at each leaf.

    Raises if a pattern matches nothing (a typo would silently freeze the whole model)
    or if nothing at all is trainable.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    compiled = [re.compile(p) for p in patterns]
    flat = traverse_util.flatten_dict(params)
    names = {k: "/".join(k) for k in flat}
    unused = [p.pattern for p in compiled if not any(p.search(n) for n in names.values())]
    if unused:
        raise UserError(f"config.trainable pattern(s) {unused} match no parameter; "
                         f"parameter paths look like {sorted(names.values())[:3]} ...")
    out = {k: TRAINABLE if any(p.search(names[k]) for p in compiled) else FROZEN for k in flat}
    if TRAINABLE not in out.values():
        raise UserError(f"config.trainable {list(patterns)} leaves no trainable parameter")
    return traverse_util.unflatten_dict(out)


def with_head_trained(patterns: Sequence[str], params: Any, head: str) -> tuple[tuple[str, ...], bool]:
    """(patterns, added): `patterns` plus '^<head>/' when the model has parameters under
    `head` and the patterns leave every one of them frozen (a head trained by its own
    loss, like the quality head, would otherwise stay at its random init and report
    noise, silently). `added` says whether the pattern was added."""
    patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
    names = [n for n in path_names(params) if n.startswith(head + "/")]
    compiled = [re.compile(p) for p in patterns]
    if not names or any(p.search(n) for p in compiled for n in names):
        return patterns, False
    return (*patterns, f"^{head}/"), True


def split(tree: Any, label_tree: Any) -> tuple[dict, dict]:
    """(trainable, frozen) nested dicts; merging them gives `tree` back."""
    flat, flat_labels = traverse_util.flatten_dict(tree), traverse_util.flatten_dict(label_tree)
    trainable = {k: v for k, v in flat.items() if flat_labels[k] == TRAINABLE}
    frozen = {k: v for k, v in flat.items() if flat_labels[k] == FROZEN}
    return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge(*trees: dict) -> dict:
    flat = {}
    for tree in trees:
        flat.update(traverse_util.flatten_dict(tree))
    return traverse_util.unflatten_dict(flat)


def optimizer(trainable_tx: optax.GradientTransformation, label_tree: Any) -> optax.GradientTransformation:
    """`trainable_tx` on trainable leaves; frozen leaves get no update and no state."""
    return optax.partition({TRAINABLE: trainable_tx, FROZEN: optax.set_to_zero()}, label_tree)


def count(tree: Any) -> int:
    return sum(int(v.size) for v in traverse_util.flatten_dict(tree).values())
