"""The `quality` evaluator: report["quality"], the quality head's mean scan-quality
estimate per cell of the test grid (does it fall as the scans degrade?). Only for a
model with a quality head, reported with calibration (whose abstention rule can use it)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def quality_summary(predictions: Mapping) -> dict:
    """{"clean": mean estimate, "degraded": {corruption: {severity: mean}}}."""
    degraded: dict = {}
    for key, out in predictions.items():
        if key is not None:
            degraded.setdefault(key[0], {})[str(key[1])] = float(np.mean(out["quality"]))
    return {"clean": float(np.mean(predictions[None]["quality"])), "degraded": degraded}


class Evaluator:
    def check(self, config: Any) -> None:
        del config

    def run(self, context: Any) -> dict | None:
        if "calibration" not in context.results:
            return None
        grid = context.grid(context.config.test_split)
        return quality_summary(grid) if "quality" in grid[None] else None
