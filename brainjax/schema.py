"""The schema of report.json and calibration.json, typed, and their readers.

report.json is written by the evaluators (`evaluators/common.py`: each section under the
evaluator's name, `robustness`'s at the top level); calibration.json is derived from it
(`calibration_record`) and is what predict, export and the export sidecar read. This
module owns their shape: the TypedDicts below describe every key the readers use, and the
readers here are the only code outside the writing evaluator that spells a report key.
"""

from __future__ import annotations

import os
from typing import Any, TypedDict

from brainjax import files
from brainjax.errors import UserError

CALIBRATION_FILE = "calibration.json"
REPORT_FILE = "report.json"
OOD_STATS_FILE = "ood_stats.npz"


class Metrics(TypedDict, total=False):
    """evaluators.metrics.classification_metrics."""
    num_examples: int
    accuracy: float
    macro_f1: float
    macro_f1_classes: list[str]
    loss: float
    per_class: dict[str, dict[str, float]]
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted
    ci95: dict[str, Any]  # accuracy, macro_f1: [low, high]; samples


class Summary(TypedDict, total=False):
    clean_accuracy: float
    clean_macro_f1: float
    mean_degraded_accuracy: float | None
    per_corruption_accuracy: dict[str, float]
    corruption_error: dict[str, float]
    mCE: float | None
    relative_mCE: float | None


class SplitSection(TypedDict, total=False):
    """One split through the robustness metrics (the top level, other_splits[s], holdout)."""
    split: str
    num_examples: int
    deduplicated: bool
    clean: Metrics
    degraded: dict[str, dict[str, Metrics]]  # corruption -> severity ("1".."5") -> metrics + level
    summary: Summary


class OodEntry(TypedDict):
    method: str
    threshold: float
    keep: float
    stats_file: str


class Calibration(TypedDict, total=False):
    """calibration.json."""
    temperature: float
    rule: str  # brainjax.abstention.RULES
    target_accuracy: float
    thresholds: dict[str, float]  # rule -> threshold (max_prob, quality)
    ood: OodEntry


class Report(SplitSection, total=False):
    """report.json: the test split's section at the top level, plus one section per
    evaluator (`calibration`, `ood`, `selective`, `quality`, `other_splits`,
    `seed_protocol`, `sources`, `holdout`, ...)."""
    dataset: str
    class_names: list[str]
    calibration: dict
    ood: dict
    selective: dict
    other_splits: dict[str, SplitSection]
    sources: dict[str, dict[str, Metrics]]
    holdout: dict


def calibration_record(report: Report) -> Calibration:
    """calibration.json from a report: the temperature and, per abstention rule, the
    threshold fitted on validation; with OOD, its method, threshold and statistics file."""
    sel = report["selective"]
    record: Calibration = {"temperature": report["calibration"]["temperature"], "rule": sel["rule"],
                           "target_accuracy": sel["target_accuracy"],
                           "thresholds": {rule: entry["threshold"] for rule, entry in sel["rules"].items()
                                          if not isinstance(entry["threshold"], dict)}}
    if "ood" in report:
        record["ood"] = {"method": report["ood"]["method"], "threshold": report["ood"]["threshold"],
                         "keep": report["ood"]["keep"], "stats_file": OOD_STATS_FILE}
    return record


def read_calibration(workdir: str) -> Calibration | None:
    """<workdir>/calibration.json, or None if there is none; one line when it is not one
    brainjax wrote."""
    path = os.path.join(workdir, CALIBRATION_FILE)
    if not os.path.isfile(path):
        return None
    calibration = files.read_json(path, "the run's calibration (written by --mode=evaluate)")
    missing = [k for k in ("temperature", "rule", "thresholds") if not isinstance(calibration, dict) or k not in calibration]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}: not a calibration brainjax wrote; rerun --mode=evaluate "
                        "to write it again")
    return calibration


def temperature(calibration: Calibration | None) -> float:
    """The fitted temperature (1.0 without calibration)."""
    return float(calibration["temperature"]) if calibration else 1.0


def read_report(path: str, what: str = "the run's report") -> Report:
    report = files.read_json(path, what)
    if not isinstance(report, dict):
        raise UserError(f"{path} is not a report brainjax wrote (not a JSON object); rerun --mode=evaluate")
    return report


def headline(report: Report, path: str) -> dict:
    """The headline figures of a report (the export sidecar's "report"); one line when it
    lacks them."""
    try:
        return {"dataset": report.get("dataset"), "split": report.get("split"),
                "num_examples": report.get("num_examples"),
                "clean_accuracy": report["summary"]["clean_accuracy"],
                "clean_macro_f1": report["summary"]["clean_macro_f1"],
                "mean_corruption_accuracy": report["summary"].get("mean_degraded_accuracy")}
    except (KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{path} lacks {err} (not a report brainjax wrote); rerun --mode=evaluate to write it "
                        "again") from None


def held_out_source(report: Report) -> str | None:
    """The source a report scores as held out (report["holdout"]["source"]), if any."""
    return (report.get("holdout") or {}).get("source")


def holdout_row(name: str, report: Report) -> dict:
    """One loso.json row from a held-out run's report: accuracy (95% CI), macro F1, mean
    corruption accuracy, copies removed, OOD AUROC vs validation, in-source test accuracy."""
    h = report["holdout"]
    auroc = h.get("ood_auroc_vs_validation") or {}
    return {"held_out": name, "num_examples": h["num_examples"], "accuracy": h["clean"]["accuracy"],
            "ci95": h["clean"].get("ci95", {}).get("accuracy"), "macro_f1": h["clean"]["macro_f1"],
            "mean_degraded_accuracy": h["summary"]["mean_degraded_accuracy"],
            "copies_of_training_removed": h["copies_of_training_removed"],
            "ood_auroc": auroc.get(h.get("ood_method")), "in_source_test_accuracy": report["clean"]["accuracy"]}
