"""The `other_splits` evaluator: report["other_splits"][split], the robustness section
of every split in eval.extra_splits (other than the test split)."""

from __future__ import annotations

from typing import Any

from brainjax.evaluators import robustness


class Evaluator:
    def check(self, config: Any) -> None:
        del config  # split names are checked by preflight, against the dataset

    def run(self, context: Any) -> dict | None:
        config = context.config
        extra = [s for s in config.eval.extra_splits if s != config.test_split]
        if not extra:
            return None
        return {split: robustness.evaluate_split(context, split, context.shared.get("reference")) for split in extra}
