"""Calibration and selective prediction on host logits (numpy; no training imports).

A model that scores 0.95 on clean scans and 0.3 on low-contrast ones must not be
equally confident on both. Two tools:
  * temperature scaling (Guo et al. 2017): one scalar T > 0, fitted on the validation
    split by minimising NLL of softmax(logits / T); it changes confidence, never the
    predicted class. ECE (15 equal-width bins), NLL and Brier score measure the effect.
  * selective prediction: rank examples by a confidence score, keep the most confident
    fraction (coverage) and measure the accuracy of what is kept (risk-coverage curve,
    AURC = area under the risk curve, accuracy at 80% / 90% coverage). A threshold on
    the score, fitted on validation for a target accuracy, is the abstention rule.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from brainjax import plots
from brainjax.errors import UserError
from brainjax.evaluators import ood

ECE_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class."""
    p = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(p, 1e-12))))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared distance between the probability vector and the one-hot label."""
    onehot = np.eye(probs.shape[-1])[labels]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=-1)))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Per equal-width confidence bin: count, mean confidence, accuracy (empty bins: count 0)."""
    confidence = probs.max(axis=-1)
    correct = (probs.argmax(axis=-1) == labels).astype(np.float64)
    # Bin b holds confidences in (b/bins, (b+1)/bins]; confidence >= 1/classes > 0.
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    acc_sum = np.bincount(index, weights=correct, minlength=bins)
    safe = np.maximum(count, 1)
    return {"count": count, "confidence": conf_sum / safe, "accuracy": acc_sum / safe}


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: sum over bins of (share of examples) x |accuracy - confidence|."""
    b = reliability_bins(probs, labels, bins)
    return float(np.sum(b["count"] / len(labels) * np.abs(b["accuracy"] - b["confidence"])))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising validation NLL of softmax(logits / T): golden-section search
    over log T in [-3, 3] (NLL is unimodal in log T for a fixed set of logits), refined
    to ~1e-4 relative. Deterministic, no optimiser state, no extra dependency."""
    labels = np.asarray(labels)
    f = lambda log_t: nll(softmax(logits, np.exp(log_t)), labels)
    lo, hi = -3.0, 3.0
    ratio = (np.sqrt(5.0) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = f(a), f(b)
    while hi - lo > 1e-4:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = f(b)
    return float(np.exp((lo + hi) / 2))


def calibration_metrics(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    """ECE, NLL and Brier before (T = 1) and after temperature scaling."""
    before, after = softmax(logits), softmax(logits, temperature)
    return {"ece_before": ece(before, labels), "ece_after": ece(after, labels),
            "nll_before": nll(before, labels), "nll_after": nll(after, labels),
            "brier_before": brier(before, labels), "brier_after": brier(after, labels)}


def _ranked(scores: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores from most to least confident, accuracy of the k most confident for k = 1..N,
    mask of the last example of each tie group: ties are kept or dropped together)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    s, c = np.asarray(scores, np.float64)[order], np.asarray(correct, np.float64)[order]
    accuracy = np.cumsum(c) / np.arange(1, len(s) + 1)
    return s, accuracy, np.append(s[1:] != s[:-1], True)


def risk_coverage(scores: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, accuracy of the kept examples) when keeping the k most confident, k = 1..N.
    Ties in the score are kept together (the curve only has points between tie groups)."""
    s, accuracy, last_of_tie = _ranked(scores, correct)
    kept = np.arange(1, len(s) + 1)
    return kept[last_of_tie] / len(s), accuracy[last_of_tie]


def selective_metrics(scores: np.ndarray, correct: np.ndarray) -> dict:
    """AURC (mean risk over the coverage curve, lower is better) and the accuracy of the
    kept predictions at 80% and 90% coverage (the most confident 80% / 90%)."""
    coverage, accuracy = risk_coverage(scores, correct)
    risk = 1.0 - accuracy
    widths = np.diff(np.concatenate([[0.0], coverage]))
    at = lambda cov: float(accuracy[np.searchsorted(coverage, cov - 1e-12)])
    return {"aurc": float(np.sum(widths * risk)), "accuracy_at_80": at(0.8), "accuracy_at_90": at(0.9)}


def fit_threshold(scores: np.ndarray, correct: np.ndarray, target_accuracy: float) -> float:
    """The lowest score threshold whose kept set (score >= threshold) reaches
    `target_accuracy` on this (validation) data, i.e. the largest coverage meeting the
    target. If no threshold does, the highest score (keep only the most confident)."""
    s, accuracy, last_of_tie = _ranked(scores, correct)
    ok = np.nonzero(last_of_tie & (accuracy >= target_accuracy))[0]
    return float(s[ok[-1]]) if len(ok) else float(s[0])


def mean_over(entries: Mapping[str, Mapping[str, float]]) -> dict:
    """Key-wise mean of several metric dicts (e.g. over corruption x severity)."""
    keys = next(iter(entries.values())).keys()
    return {k: float(np.mean([e[k] for e in entries.values()])) for k in keys}


def curve_points(scores: np.ndarray, correct: np.ndarray, points: int = 101) -> dict:
    """Accuracy of the kept predictions at 100 evenly spaced coverages (the plotted curve)."""
    coverage, accuracy = risk_coverage(scores, correct)
    grid = np.linspace(0.0, 1.0, points)[1:]
    picked = np.minimum(np.searchsorted(coverage, grid - 1e-12), len(coverage) - 1)
    return {"coverage": [float(c) for c in grid], "accuracy": [float(accuracy[i]) for i in picked]}


def selective_cell(scores: np.ndarray, correct: np.ndarray, threshold: float) -> dict:
    """Selective metrics of a rule that keeps a prediction when its score reaches `threshold`."""
    kept = scores >= threshold
    return {**selective_metrics(scores, correct),
            "coverage_at_threshold": float(kept.mean()),
            # nothing kept: no error among the kept (selective risk 0 by convention)
            "accuracy_at_threshold": float(correct[kept].mean()) if kept.any() else 1.0}


ABSTAIN_RULES = ("max_prob", "quality")


def check_abstain_rule(rule: str, has_quality: bool, has_ood: bool = False) -> None:
    """A clear error for an unknown rule, 'quality' without a quality head, or an OOD rule
    without an OOD score."""
    if rule in ood.OOD_RULES:
        if not has_ood:
            raise UserError(f"eval.abstain_rule={rule!r} needs an OOD score: set eval.ood_method (e.g. 'mahalanobis') "
                            "and keep eval.calibration=True")
        return
    if rule not in ABSTAIN_RULES:
        raise UserError(f"eval.abstain_rule must be one of {ABSTAIN_RULES + ood.OOD_RULES}, got {rule!r}")
    if rule == "quality" and not has_quality:
        raise UserError("eval.abstain_rule='quality' needs a quality head: set model.quality_head.enabled=True")


def abstain_score(probs: np.ndarray, quality: np.ndarray | None, rule: str) -> np.ndarray:
    """The confidence score an abstention rule thresholds: 'max_prob' the calibrated top
    probability; 'quality' that times the quality head's scan-quality estimate in [0, 1]
    (a confident prediction on a scan that looks badly degraded is still doubted)."""
    check_abstain_rule(rule, quality is not None)
    return probs.max(-1) * quality if rule == "quality" else probs.max(-1)


def calibrate(validation: Mapping, predictions: Mapping, target_accuracy: float, rule: str = "max_prob"
              ) -> tuple[dict, dict]:
    """(report["calibration"], report["selective"]) from the validation outputs (where T
    and the abstention thresholds are fitted) and the test grid's outputs ({None: clean,
    (corruption, severity): ...}, each predict_outputs' dict: logits, label[, quality]).

    Every available rule is scored (under "rules"); the top-level keys are `rule`'s.
    A rule keeps a prediction when its score (`abstain_score`) reaches the threshold
    fitted on validation for `target_accuracy`."""
    temperature = fit_temperature(validation["logits"], validation["label"])
    has_quality = "quality" in validation
    check_abstain_rule(rule, has_quality)
    rules = [r for r in ABSTAIN_RULES if r != "quality" or has_quality]
    val_probs = softmax(validation["logits"], temperature)
    val_correct = val_probs.argmax(-1) == validation["label"]
    thresholds = {r: fit_threshold(abstain_score(val_probs, validation.get("quality"), r), val_correct,
                                               target_accuracy) for r in rules}
    cal_cells, sel_cells = {}, {r: {} for r in rules}
    scored = {}
    for key, out in predictions.items():
        probs = softmax(out["logits"], temperature)
        correct = probs.argmax(-1) == out["label"]
        cal_cells[key] = calibration_metrics(out["logits"], out["label"], temperature)
        for r in rules:
            score = abstain_score(probs, out.get("quality"), r)
            sel_cells[r][key] = selective_cell(score, correct, thresholds[r])
            scored.setdefault(r, {})[key] = (score, correct)
    degraded = [k for k in predictions if k is not None]
    mean = lambda cells: mean_over({str(k): cells[k] for k in degraded}) if degraded else {}
    clean = predictions[None]
    bins = {name: {k: [float(v) for v in vals] for k, vals in
                   reliability_bins(softmax(clean["logits"], t), clean["label"]).items()}
            for name, t in (("before", 1.0), ("after", temperature))}
    cal = {"temperature": temperature, "fitted_on": "validation", "clean": cal_cells[None],
           "degraded_mean": mean(cal_cells), "reliability": bins, "bins": ECE_BINS}
    by_rule = {}
    for r in rules:
        curves = {"clean": curve_points(*scored[r][None])}
        if degraded:
            curves["degraded"] = curve_points(np.concatenate([scored[r][k][0] for k in degraded]),
                                               np.concatenate([scored[r][k][1] for k in degraded]))
        by_rule[r] = {"threshold": thresholds[r], "clean": sel_cells[r][None], "degraded_mean": mean(sel_cells[r]),
                      "curves": curves}
    sel = {"rule": rule, "target_accuracy": target_accuracy, **by_rule[rule], "rules": by_rule}
    return cal, sel


class Evaluator:
    """report["calibration"]: the temperature fitted on validation and what it does on the
    test grid. Hands the selective rules it fitted to the `selective` evaluator
    (`context.shared["selective"]`) and the temperature to `ood`."""

    def check(self, config) -> None:
        has_quality = bool(config.model.get("quality_head") and config.model.quality_head.get("enabled"))
        has_ood = bool(config.eval.ood_method) and config.eval.calibration
        check_abstain_rule(config.eval.abstain_rule, has_quality, has_ood)

    def plot(self, section: dict, outdir: str) -> None:
        plots.plot_reliability(section, os.path.join(outdir, "reliability.png"))

    def run(self, context) -> dict | None:
        config = context.config
        if not config.eval.calibration:
            return None
        validation = context.predictions(config.val_split, adapted=False)  # the trained statistics
        rule = config.eval.abstain_rule
        cal, sel = calibrate(validation, context.grid(config.test_split),
                             float(config.eval.abstain_target_accuracy),
                             "max_prob" if rule in ood.OOD_RULES else rule)
        context.shared["selective"] = sel
        return cal
