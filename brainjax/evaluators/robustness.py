"""The test report: clean + every corruption x severity on the test split (and any extra
splits), optionally the seed project's protocol. Returns the report dict; writing it
(report.json, plots) is `brainjax.report`'s job.

report:
  {"dataset", "split", "num_examples", "deduplicated", "class_names",
   "clean": METRICS,
   "degraded": {corruption: {severity: METRICS + {"level"}}},
   "summary": {"clean_accuracy", "mean_degraded_accuracy", "per_corruption_accuracy", ...},
   "adaptation": {"method", "on", "passes", "residual", "labels_used"} (eval.adapt_batchnorm only),
   "other_splits": {split: same keys}, "seed_protocol": {...},
   "calibration": {"temperature", "clean": {ece/nll/brier _before/_after}, "degraded_mean": same,
                   "reliability": bins clean before/after},
   "selective": {"rule", "target_accuracy", "threshold", "clean": {"aurc", "accuracy_at_80",
                 "accuracy_at_90", "coverage_at_threshold", "accuracy_at_threshold"},
                 "degraded_mean": same, "curves": risk-coverage points}}
METRICS = accuracy, macro F1, loss, per-class precision/recall/F1/support, confusion
matrix (rows = true class, columns = predicted; sums to the split size), 95% CIs.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from brainjax import degrade, files
from brainjax.errors import UserError
from brainjax.evaluators import calibration, ood
from brainjax.evaluators.adapt import make_batchnorm_adapter
from brainjax.evaluators.metrics import classification_metrics, summarize
from brainjax.evaluators.predict import predict_outputs, predict_split

log = logging.getLogger("brainjax")


def robustness_grid(eval_fns: Mapping[str | None, Callable], rvariables: Any, batches_fn: Callable,
                    rng: jax.Array, class_names: Sequence[str], corruptions: Sequence[str],
                    severities: Sequence[int], predictions: dict | None = None) -> tuple[dict, dict]:
    """(clean metrics, {corruption: {severity: metrics}}) over one split. If
    `predictions` is a dict, it receives the outputs (predict_outputs) of every cell,
    keyed None (clean) or (corruption, severity), for calibration and abstention."""
    out = predict_outputs(eval_fns[None], rvariables, batches_fn(), rng)
    clean = classification_metrics(out["label"], out["logits"], class_names)
    if predictions is not None:
        predictions[None] = out
    degraded: dict = {}
    for ci, name in enumerate(corruptions):
        degraded[name] = {}
        for severity in severities:
            level = degrade.level_for(name, severity)
            key = jax.random.fold_in(jax.random.fold_in(rng, ci + 1), severity)
            out = predict_outputs(eval_fns[name], rvariables, batches_fn(), key, level)
            if predictions is not None:
                predictions[(name, severity)] = out
            degraded[name][str(severity)] = {"level": level,
                                             **classification_metrics(out["label"], out["logits"], class_names)}
    return clean, degraded


def check_config(config: Any, model: Any, batch_stats: Mapping) -> None:
    """The evaluation settings a run will need after training, checked before its first
    step: a typo in eval.* must not cost a whole training run."""
    corruptions, severities = tuple(config.eval.corruptions), tuple(config.eval.severities)
    if corruptions and not severities:
        raise UserError("eval.severities is empty while eval.corruptions names corruptions; give severities in 1..5")
    for severity in severities:
        if not isinstance(severity, int) or isinstance(severity, bool) or not 1 <= severity <= 5:
            raise UserError(f"eval.severities must be integers in 1..5, got {severity!r}")
    unknown = [name for name in corruptions if name not in degrade.NAMES]
    if unknown:
        raise UserError(f"eval.corruptions: unknown corruption(s) {unknown}; expected names from {degrade.NAMES}")
    ood.check_config(config)
    check_abstain_rule(config.eval.get("abstain_rule", "max_prob"), getattr(model, "quality_head", None) is not None,
                       bool(config.eval.get("ood_method", "mahalanobis_l2")) and config.eval.get("calibration", True))
    load_reference(config.eval.get("reference_report"))
    if config.eval.get("adapt_batchnorm", False):
        make_batchnorm_adapter(model, batch_stats)


def load_reference(path: str | None) -> dict | None:
    """The report.json of the reference model for mCE (config.eval.reference_report)."""
    if not path:
        return None
    if not os.path.isfile(path):
        raise UserError(f"config.eval.reference_report={path} does not exist; point it at the report.json "
                        "of the reference model (e.g. the same config trained with train_degrade.recipe=none)")
    report = files.read_json(path, "a reference report (config.eval.reference_report)")
    if not isinstance(report, dict) or "clean" not in report:
        raise UserError(f"config.eval.reference_report={path} is not a brainjax report.json (no 'clean' section); "
                        "point it at the report.json of the reference model")
    return {**report, "source": path}


def evaluate_split(config: Any, eval_fns: Mapping, rvariables: Any, pipeline: Any, split: str, rng: jax.Array,
                   reference: dict | None = None, predictions: dict | None = None) -> dict:
    """Clean + degraded metrics on one split, with its size and dedup status."""
    clean, degraded = robustness_grid(eval_fns, rvariables, lambda: pipeline.eval_batches(split), rng,
                                      pipeline.class_names, tuple(config.eval.corruptions),
                                      tuple(config.eval.severities), predictions)
    ref = None
    if reference is not None:
        ref = reference if reference.get("split") == split else reference.get("other_splits", {}).get(split)
    out = {"split": split, "num_examples": pipeline.num_examples(split),
           "deduplicated": "dedup" in split, "clean": clean, "degraded": degraded,
           "summary": summarize(clean, degraded, ref)}
    ci = clean.get("ci95", {})
    log.info("%s (%d examples%s): clean accuracy %.4f [%s], macro F1 %.4f; mean corruption accuracy %s",
             split, out["num_examples"], ", deduplicated" if out["deduplicated"] else "", clean["accuracy"],
             ", ".join(f"{v:.3f}" for v in ci.get("accuracy", [])), clean["macro_f1"],
             f"{out['summary']['mean_degraded_accuracy']:.4f}" if degraded else "n/a")
    return out


def seed_protocol(eval_fns: Mapping, rvariables: Any, pipeline: Any, split: str, rng: jax.Array) -> dict:
    """The seed project's evaluation: every image of `split` plus one degraded copy (a
    random 1-3 of noise/blur/downsampling, fixed per image), scored on the mixed set, and,
    unlike the seed, also on the clean and the degraded halves alone."""
    names = pipeline.class_names
    key = jax.random.fold_in(rng, 10_000)
    clean_logits, labels, _ = predict_split(eval_fns[None], rvariables, pipeline.eval_batches(split), key)
    deg_logits, deg_labels, _ = predict_split(eval_fns[degrade.SEED_CHAIN], rvariables,
                                              pipeline.eval_batches(split), key)
    return {"split": split, "num_examples": int(len(labels)),
            "clean": classification_metrics(labels, clean_logits, names),
            "degraded": classification_metrics(deg_labels, deg_logits, names),
            "mixed": classification_metrics(np.concatenate([labels, deg_labels]),
                                            np.concatenate([clean_logits, deg_logits]), names)}


def _adapted_to(adapt: Callable | None, rvariables: Any, pipeline: Any, split: str) -> tuple[Any, dict | None]:
    """(variables to evaluate `split` with, report["adaptation"] or None): with an `adapt`
    function (evaluators.make_batchnorm_adapter), BatchNorm statistics re-estimated on the
    split's own images (transductive; its labels are never read)."""
    if adapt is None:
        return rvariables, None
    adapted, info = adapt(rvariables, lambda: pipeline.eval_batches(split))
    log.info("adapted BatchNorm statistics to %s's images (%d passes, last change %.1e; labels not used)",
             split, info["passes"], info["residual"])
    return adapted, {"method": "batchnorm", "on": split, **info, "labels_used": False}


def evaluate(config: Any, eval_fns: Mapping, rvariables: Any, pipeline: Any, rng: jax.Array,
             adapt: Callable | None = None, ood_fns: ood.OodFns | None = None) -> tuple[dict, dict | None]:
    """The report of config.test_split (+ config.eval.extra_splits, + the seed protocol).
    `adapt` (config eval.adapt_batchnorm): each evaluated split is scored with BatchNorm
    statistics adapted to its own images; calibration and the seed protocol keep the
    trained statistics. `ood_fns` (evaluators.ood_fns_from_config): the out-of-distribution
    scores, fitted on the training split and thresholded on validation (report["ood"]).
    Returns (report, the OOD Gaussian statistics or None)."""
    reference = load_reference(config.eval.get("reference_report"))

    def scored(split: str, predictions: dict | None = None) -> dict:
        split_variables, adaptation = _adapted_to(adapt, rvariables, pipeline, split)
        out = evaluate_split(config, eval_fns, split_variables, pipeline, split, rng, reference, predictions)
        return {**out, "adaptation": adaptation} if adaptation else out

    predictions: dict = {}
    ood_stats = None
    main = scored(config.test_split, predictions)
    report = {"dataset": config.dataset, "class_names": pipeline.class_names, **main}
    if config.eval.get("calibration", True):
        validation = predict_outputs(eval_fns[None], rvariables, pipeline.eval_batches(config.val_split), rng)
        rule = config.eval.get("abstain_rule", "max_prob")
        report["calibration"], report["selective"] = calibrate(
            validation, predictions, float(config.eval.get("abstain_target_accuracy", 0.95)),
            "max_prob" if rule in ood.OOD_RULES else rule)
        if ood_fns is not None:
            report["ood"], rows, ood_stats = ood.evaluate_ood(
                config, ood_fns, rvariables, pipeline, rng, report["calibration"]["temperature"],
                report["selective"]["rules"]["max_prob"]["threshold"])
            report["selective"]["rules"].update(rows)
            if rule in ood.OOD_RULES:
                report["selective"].update({"rule": rule, **rows[rule]})
        if "quality" in predictions[None]:
            report["quality"] = quality_summary(predictions)
        cal, sel = report["calibration"], report["selective"]
        threshold = sel["threshold"]
        threshold = (", ".join(f"{k} {v:.4g}" for k, v in threshold.items()) if isinstance(threshold, dict)
                     else f"{threshold:.3f}")
        log.info("calibration: T=%.3f (fitted on %s); clean ECE %.4f -> %.4f; selective (%s): threshold %s keeps "
                 "%.1f%% of clean test at accuracy %.4f", cal["temperature"], config.val_split,
                 cal["clean"]["ece_before"], cal["clean"]["ece_after"], sel["rule"], threshold,
                 100 * sel["clean"]["coverage_at_threshold"], sel["clean"]["accuracy_at_threshold"])
    extra = [s for s in config.eval.get("extra_splits", ()) if s != config.test_split]
    if extra:
        report["other_splits"] = {split: scored(split) for split in extra}
    if config.eval.get("seed_protocol_split"):
        sp = seed_protocol(eval_fns, rvariables, pipeline, config.eval.seed_protocol_split, rng)
        report["seed_protocol"] = sp
        log.info("seed protocol on %s: mixed accuracy %.4f (clean %.4f, degraded %.4f)", sp["split"],
                 sp["mixed"]["accuracy"], sp["clean"]["accuracy"], sp["degraded"]["accuracy"])
    log.info("test %s: clean accuracy %.4f, macro F1 %.4f; %s", config.test_split, main["clean"]["accuracy"],
             main["clean"]["macro_f1"],
             ", ".join(f"{n} {a:.3f}" for n, a in main["summary"]["per_corruption_accuracy"].items()))
    return report, ood_stats


ABSTAIN_RULES = ("max_prob", "quality")


def quality_summary(predictions: Mapping) -> dict:
    """The quality head's mean estimate per cell: does it fall as the scans degrade?"""
    degraded: dict = {}
    for key, out in predictions.items():
        if key is not None:
            degraded.setdefault(key[0], {})[str(key[1])] = float(np.mean(out["quality"]))
    return {"clean": float(np.mean(predictions[None]["quality"])), "degraded": degraded}


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
    temperature = calibration.fit_temperature(validation["logits"], validation["label"])
    has_quality = "quality" in validation
    check_abstain_rule(rule, has_quality)
    rules = [r for r in ABSTAIN_RULES if r != "quality" or has_quality]
    val_probs = calibration.softmax(validation["logits"], temperature)
    val_correct = val_probs.argmax(-1) == validation["label"]
    thresholds = {r: calibration.fit_threshold(abstain_score(val_probs, validation.get("quality"), r), val_correct,
                                               target_accuracy) for r in rules}
    cal_cells, sel_cells = {}, {r: {} for r in rules}
    scored = {}
    for key, out in predictions.items():
        probs = calibration.softmax(out["logits"], temperature)
        correct = probs.argmax(-1) == out["label"]
        cal_cells[key] = calibration.calibration_metrics(out["logits"], out["label"], temperature)
        for r in rules:
            score = abstain_score(probs, out.get("quality"), r)
            sel_cells[r][key] = calibration.selective_cell(score, correct, thresholds[r])
            scored.setdefault(r, {})[key] = (score, correct)
    degraded = [k for k in predictions if k is not None]
    mean = lambda cells: calibration.mean_over({str(k): cells[k] for k in degraded}) if degraded else {}
    clean = predictions[None]
    bins = {name: {k: [float(v) for v in vals] for k, vals in
                   calibration.reliability_bins(calibration.softmax(clean["logits"], t), clean["label"]).items()}
            for name, t in (("before", 1.0), ("after", temperature))}
    cal = {"temperature": temperature, "fitted_on": "validation", "clean": cal_cells[None],
           "degraded_mean": mean(cal_cells), "reliability": bins, "bins": calibration.ECE_BINS}
    by_rule = {}
    for r in rules:
        curves = {"clean": calibration.curve_points(*scored[r][None])}
        if degraded:
            curves["degraded"] = calibration.curve_points(np.concatenate([scored[r][k][0] for k in degraded]),
                                               np.concatenate([scored[r][k][1] for k in degraded]))
        by_rule[r] = {"threshold": thresholds[r], "clean": sel_cells[r][None], "degraded_mean": mean(sel_cells[r]),
                      "curves": curves}
    sel = {"rule": rule, "target_accuracy": target_accuracy, **by_rule[rule], "rules": by_rule}
    return cal, sel
