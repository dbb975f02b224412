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


class Evaluator:
    def check(self, config: Any) -> None:
        del config  # holdout_source is checked with the dataset (data/multi_source.source_list)

    def run(self, context: Any) -> dict | None:
        config = context.config
        name = str(config.holdout_source)
        if not name:
            return None
        section = robustness.evaluate_split(context, "holdout", None)
        report = context.pipeline.builder.build_report()
        removed = {k.split("/", 1)[1]: n for k, n in report.get("removed_copies", {}).items()
                   if k.split("/", 1)[0] == name}
        section.update({"source": name, "copies_of_training_removed": int(removed.get("holdout", 0)),
                        "ood_auroc_vs_validation": ood_auroc(context),
                        "ood_method": config.eval.ood_method})
        return section
