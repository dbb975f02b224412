"""The `selective` evaluator: report["selective"], the abstention rules on the test
split (risk-coverage, the thresholds fitted on validation). The max_prob / quality rules
come from `calibration`, the OOD rules' rows from `ood` (both through
`context.shared`); the configured `eval.abstain_rule` is the section's top-level rule."""

from __future__ import annotations

import logging
import os
from typing import Any

from brainjax import plots
from brainjax.evaluators import ood

log = logging.getLogger("brainjax")


class Evaluator:
    def check(self, config: Any) -> None:
        del config  # the rule is checked with calibration, which fits it

    def plot(self, section: dict, outdir: str) -> None:
        plots.plot_risk_coverage(section, os.path.join(outdir, "risk_coverage.png"))

    def run(self, context: Any) -> dict | None:
        sel = context.shared.get("selective")
        if sel is None:
            return None
        rule = context.config.eval.abstain_rule
        rows = context.shared.get("ood_rows")
        if rows:
            sel["rules"].update(rows)
            if rule in ood.OOD_RULES:
                sel.update({"rule": rule, **rows[rule]})
        log_line(context, sel)
        return sel


def log_line(context: Any, sel: dict) -> None:
    cal = context.results.get("calibration")
    if cal is None:
        return
    threshold = sel["threshold"]
    threshold = (", ".join(f"{k} {v:.4g}" for k, v in threshold.items()) if isinstance(threshold, dict)
                 else f"{threshold:.3f}")
    log.info("calibration: T=%.3f (fitted on %s); clean ECE %.4f -> %.4f; selective (%s): threshold %s keeps "
             "%.1f%% of clean test at accuracy %.4f", cal["temperature"], context.config.val_split,
             cal["clean"]["ece_before"], cal["clean"]["ece_after"], sel["rule"], threshold,
             100 * sel["clean"]["coverage_at_threshold"], sel["clean"]["accuracy_at_threshold"])
