"""The `seed_protocol` evaluator: report["seed_protocol"], the seed project's evaluation
(each image of eval.seed_protocol_split plus one fixed degraded copy, scored mixed and
separately), with the trained BatchNorm statistics."""

from __future__ import annotations

import logging
from typing import Any

from brainjax.evaluators import robustness

log = logging.getLogger("brainjax")


class Evaluator:
    def check(self, config: Any) -> None:
        del config  # the split name is checked by preflight, against the dataset

    def run(self, context: Any) -> dict | None:
        split = context.config.eval.seed_protocol_split
        if not split:
            return None
        sp = robustness.seed_protocol(context.eval_fns, context.rvariables, context.pipeline, split, context.rng)
        log.info("seed protocol on %s: mixed accuracy %.4f (clean %.4f, degraded %.4f)", sp["split"],
                 sp["mixed"]["accuracy"], sp["clean"]["accuracy"], sp["degraded"]["accuracy"])
        return sp
