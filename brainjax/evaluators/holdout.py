"""The `holdout` evaluator: report["holdout"], with config.holdout_source, the held-out
source's every image (its copies of training images removed: `data/provenance`) clean and
under the eval grid, the copies removed, and the OOD AUROC of that source against the
pooled validation (from the `ood` evaluator, which scores the `holdout` split)."""

from __future__ import annotations

from typing import Any

from brainjax.evaluators import robustness


def ood_auroc(context: Any) -> dict | None:
    """{method: AUROC of holdout vs validation} from report["ood"] (None without it)."""
    ood = context.results.get("ood")
    if not ood:
        return None
    return {m: entry["vs"]["holdout"]["auroc"] for m, entry in ood["methods"].items() if "holdout" in entry["vs"]}


def removed_copies(context: Any, name: str) -> int | None:
    """How many of the held-out source's images the build removed as copies of training
    images, from the build report; None (unknown) where the build left no report."""
    report = context.pipeline.builder.build_report()
    if "removed_copies" not in report:
        return None
    return int(report["removed_copies"].get(f"{name}/holdout", 0))


class Evaluator:
    def check(self, config: Any) -> None:
        del config  # holdout_source is checked with the dataset (data/multi_source.source_list)

    def run(self, context: Any) -> dict | None:
        config = context.config
        name = str(config.holdout_source)
        if not name:
            return None
        section = robustness.evaluate_split(context, "holdout", None)
        section.update({"source": name, "copies_of_training_removed": removed_copies(context, name),
                        "ood_auroc_vs_validation": ood_auroc(context),
                        "ood_method": config.eval.ood_method})
        return section
