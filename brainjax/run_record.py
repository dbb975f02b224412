"""What a training run is, for resume: the config fields that change the saved state or
the meaning of the step counter, stored in every checkpoint's meta item.

A resume is only exact if the restored state and the step counter mean what they meant
when they were saved: the same model (shapes and the parameter-free fields such as
`model.standardize`), the same trainable set and optimizer chain (the optimizer state's
layout), the same classes, and the same batches per epoch in the same order (batch size,
input shards, dataset and training split). `preflight` compares a new config with this
record before the dataset is built and before config.json is touched; a difference is one
line naming the field. The checkpoint's record, not config.json, is the authority.

Fields that may change on resume: the learning rate (lowering it is the advice after a
non-finite loss), the schedule, evaluation settings, data locations (`model.weights_dir`,
`data_dir`, `manual_dir`) and the number of epochs.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

# Config subtrees / fields of the record, and the paths under them that may change.
RESUME_FIELDS = ("model", "image_size", "trainable", "optimizer", "batch_size", "input_shards", "dataset",
                 "train_split", "class_map", "test_fraction", "slice_axis", "volume_min_foreground", "feature_cache",
                 "fixed_degraded_copy", "sources", "holdout_source")
# Of each config.sources entry, what the training data depends on (its location may move).
SOURCE_RESUME_FIELDS = ("name", "dataset", "class_map", "weight", "train_split", "test_fraction")
MAY_CHANGE = ("model.weights_dir", "optimizer.learning_rate", "optimizer.label_smoothing")


def plain(value: Any) -> Any:
    """JSON-comparable form (tuples -> lists, ConfigDicts -> dicts)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    return json.loads(json.dumps(value, default=str))


def flat_fields(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{dotted path: leaf} of a nested dict."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_fields(value, path + "."))
        else:
            out[path] = value
    return out


def of_config(config: Any) -> dict[str, Any]:
    """{dotted path: value} of the resume fields of `config` (ConfigDict or dict)."""
    tree = plain(config)
    picked = {k: tree[k] for k in RESUME_FIELDS if k in tree}
    if "sources" in picked:
        picked["sources"] = [{k: s.get(k) for k in SOURCE_RESUME_FIELDS} for s in picked["sources"] or ()]
    return {k: v for k, v in flat_fields(picked).items() if k not in MAY_CHANGE}


def record(config: Any, class_names: list[str], steps_per_epoch: int) -> dict[str, Any]:
    """The record a checkpoint stores: `of_config` plus the dataset's class names and the
    steps per epoch."""
    return {**of_config(config), "class_names": list(class_names), "steps_per_epoch": int(steps_per_epoch)}


def differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, saved value, new value) for every field both records have and where they
    differ, in sorted order (a field only one of them has comes from another version)."""
    return [(k, saved[k], now[k]) for k in sorted(set(saved) & set(now)) if saved[k] != now[k]]


def describe(diffs: list[tuple[str, Any, Any]], limit: int = 4) -> str:
    """'field: saved X, now Y; ...' for an error line."""
    text = "; ".join(f"{k}: run {a!r}, now {b!r}" for k, a, b in diffs[:limit])
    return text + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")
