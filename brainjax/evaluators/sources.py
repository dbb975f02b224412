"""The `sources` evaluator: report["sources"][name], per source of a multi-source run
(config.sources), its images of the validation and test splits: accuracy, macro F1 over
the classes that source has there, their 95% intervals, the confusion matrix, and mean
corruption accuracy over the eval grid. Model choice is not made here: it uses the pooled
validation, like any run."""

from __future__ import annotations

from typing import Any

import numpy as np

from brainjax.evaluators.metrics import classification_metrics


def source_metrics(context: Any, split: str, k: int) -> dict | None:
    """One source's metrics on one split (None when it has no image there)."""
    clean = context.predictions(split)
    sel = clean["source"] == k
    if not sel.any():
        return None
    names = context.class_names
    metrics = classification_metrics(clean["label"][sel], clean["logits"][sel], names)
    per_corruption = {}
    for corruption in context.config.eval.corruptions:
        accs = []
        for severity in context.config.eval.severities:
            out = context.predictions(split, corruption, severity)
            accs.append(float((out["logits"][sel].argmax(-1) == out["label"][sel]).mean()))
        per_corruption[corruption] = float(np.mean(accs))
    keep = ("num_examples", "accuracy", "macro_f1", "macro_f1_classes", "ci95", "confusion_matrix", "per_class")
    return {**{key: metrics[key] for key in keep},
            "mean_degraded_accuracy": float(np.mean(list(per_corruption.values()))) if per_corruption else None,
            "per_corruption_accuracy": per_corruption}


class Evaluator:
    def check(self, config: Any) -> None:
        del config  # config.sources is checked with the dataset (data/multi_source.source_list)

    def run(self, context: Any) -> dict | None:
        names = list(getattr(context.pipeline, "source_names", []) or [])
        if not names:
            return None
        config = context.config
        out = {}
        for k, name in enumerate(names):
            section = {role: source_metrics(context, split, k)
                       for role, split in (("validation", config.val_split), ("test", config.test_split))}
            section = {role: m for role, m in section.items() if m is not None}
            if section:
                out[name] = section
        return out
