"""The abstention rules, written once: what --mode=predict prints as ABSTAIN, what the
export sidecar tells a deployment, and what a runner applies from that sidecar.

calibration.json (fitted by the calibration and ood evaluators on validation) holds the
rule and its thresholds; `sidecar_entry` turns it into the sidecar's "abstention" entry,
and `decisions` applies an entry. Predict applies the entry of its own calibration, so
predict, export and a runner cannot disagree. Rules:
  max_prob      abstain where max(probabilities) < threshold
  quality       abstain where max(probabilities) * quality < threshold
  ood           abstain where ood_score > ood.threshold
  ood_max_prob  either of max_prob and ood
Numpy only.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from brainjax.errors import UserError

RULES = ("max_prob", "quality", "ood", "ood_max_prob")


def is_out_of_distribution(ood_score: np.ndarray, ood: Mapping) -> np.ndarray:
    """The OOD test: the score above the threshold fitted on validation."""
    return np.asarray(ood_score) > ood["threshold"]


def sidecar_entry(calibration: Mapping) -> dict:
    """The abstention entry of a calibration.json: the rule, its thresholds and how to
    apply them (the export sidecar's "abstention")."""
    rule = calibration["rule"]
    entry = {"rule": rule, "target_accuracy": calibration.get("target_accuracy")}
    ood = calibration.get("ood")
    if ood is not None:
        entry["ood"] = {"method": ood["method"], "threshold": float(ood["threshold"]), "keep": ood["keep"],
                        "how": "out of distribution where ood_score > threshold"}
    if rule in ("ood", "ood_max_prob"):
        entry["threshold"] = float(ood["threshold"])
        entry["how"] = "abstain where ood_score > ood.threshold" + (
            " or max(probabilities) < max_prob_threshold" if rule == "ood_max_prob" else "")
        if rule == "ood_max_prob":
            entry["max_prob_threshold"] = float(calibration["thresholds"]["max_prob"])
        return entry
    entry["threshold"] = float(calibration["thresholds"][rule])
    entry["how"] = ("abstain where max(probabilities) " + ("* quality " if rule == "quality" else "")
                    + "< threshold (what --mode=predict prints as ABSTAIN)")
    return entry


def decisions(entry: Mapping, probabilities: np.ndarray, quality: np.ndarray | None = None,
              ood_score: np.ndarray | None = None) -> np.ndarray:
    """True where the entry's rule says not to rely on the prediction."""
    rule = entry["rule"]
    if rule not in RULES:
        raise UserError(f"unknown abstention rule {rule!r} (known: {', '.join(RULES)})")
    top = np.asarray(probabilities).max(-1)
    if rule == "quality" and quality is None:
        raise UserError("the abstention rule is 'quality' but this model has no quality head")
    if rule in ("ood", "ood_max_prob"):
        if ood_score is None:
            raise UserError(f"the abstention rule is {rule!r} but no OOD score was computed")
        out = is_out_of_distribution(ood_score, entry["ood"])
        return out if rule == "ood" else out | (top < entry["max_prob_threshold"])
    score = top * (np.asarray(quality) if rule == "quality" else 1.0)
    return score < entry["threshold"]
