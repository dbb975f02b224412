"""The `robustness` evaluator: the test split clean and under every corruption x
severity (its section is report.json's top level), with what the other evaluators share:
the reference report for mCE, and the configured checks of the grid.

report (top level): {"dataset", "class_names", "split", "num_examples", "deduplicated",
  "clean": METRICS, "degraded": {corruption: {severity: METRICS + {"level"}}},
  "summary": {"clean_accuracy", "mean_degraded_accuracy", "per_corruption_accuracy", ...},
  "adaptation": {...} (eval.adapt_batchnorm only)}
METRICS = accuracy, macro F1, loss, per-class precision/recall/F1/support, confusion
matrix (rows = true class, columns = predicted; sums to the split size), 95% CIs.
The other sections come from the other evaluators (`evaluators/common.py`).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping

import jax
import numpy as np

from brainjax import degrade, files, plots
from brainjax.errors import UserError
from brainjax.evaluators.adapt import make_batchnorm_adapter
from brainjax.evaluators.metrics import classification_metrics, summarize
from brainjax.evaluators.predict import predict_split

log = logging.getLogger("brainjax")


def grid_metrics(context: Any, split: str) -> tuple[dict, dict]:
    """(clean metrics, {corruption: {severity: metrics}}) of one split, from the
    context's (cached) predictions."""
    names = context.class_names
    out = context.predictions(split)
    clean = classification_metrics(out["label"], out["logits"], names)
    degraded: dict = {}
    for name in context.config.eval.corruptions:
        degraded[name] = {}
        for severity in context.config.eval.severities:
            out = context.predictions(split, name, severity)
            degraded[name][str(severity)] = {"level": degrade.level_for(name, severity),
                                             **classification_metrics(out["label"], out["logits"], names)}
    return clean, degraded


def check_grid(config: Any) -> None:
    """eval.corruptions, eval.severities and eval.reference_report, before training."""
    corruptions, severities = tuple(config.eval.corruptions), tuple(config.eval.severities)
    if corruptions and not severities:
        raise UserError("eval.severities is empty while eval.corruptions names corruptions; give severities in 1..5")
    for severity in severities:
        if not isinstance(severity, int) or isinstance(severity, bool) or not 1 <= severity <= 5:
            raise UserError(f"eval.severities must be integers in 1..5, got {severity!r}")
    unknown = [name for name in corruptions if name not in degrade.NAMES]
    if unknown:
        raise UserError(f"eval.corruptions: unknown corruption(s) {unknown}; expected names from {degrade.NAMES}")
    load_reference(config.eval.reference_report)


def check_config(config: Any, model: Any, batch_stats: Mapping) -> None:
    """The evaluation settings a run will need after training, checked before its first
    step: every configured evaluator's check, and the BatchNorm adapter the model needs
    for eval.adapt_batchnorm (a typo in eval.* must not cost a whole training run)."""
    from brainjax.evaluators import common

    common.check_all(config)
    if config.eval.adapt_batchnorm:
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


def evaluate_split(context: Any, split: str, reference: dict | None = None) -> dict:
    """Clean + degraded metrics on one split, with its size and dedup status (and, with
    eval.adapt_batchnorm, the adaptation it was scored after)."""
    clean, degraded = grid_metrics(context, split)
    ref = None
    if reference is not None:
        ref = reference if reference.get("split") == split else reference.get("other_splits", {}).get(split)
    out = {"split": split, "num_examples": context.pipeline.num_examples(split),
           "deduplicated": "dedup" in split, "clean": clean, "degraded": degraded,
           "summary": summarize(clean, degraded, ref)}
    _, adaptation = context.variables(split)
    if adaptation:
        out["adaptation"] = adaptation
    ci = clean.get("ci95", {})
    log.info("%s (%d examples%s): clean accuracy %.4f [%s], macro F1 %.4f; mean corruption accuracy %s",
             split, out["num_examples"], ", deduplicated" if out["deduplicated"] else "", clean["accuracy"],
             ", ".join(f"{v:.3f}" for v in ci.get("accuracy", [])), clean["macro_f1"],
             f"{out['summary']['mean_degraded_accuracy']:.4f}" if degraded else "n/a")
    return out


class Evaluator:
    """report.json's top level: the test split's clean + corruption grid."""

    def check(self, config: Any) -> None:
        check_grid(config)

    def plot(self, section: dict, outdir: str) -> None:
        """confusion_matrix.png (clean test split) and robustness.png (the grid)."""
        plots.plot_confusion(np.asarray(section["clean"]["confusion_matrix"]), section["class_names"],
                             os.path.join(outdir, "confusion_matrix.png"),
                             title=f"{section['dataset']} {section['split']} (clean)")
        if section["degraded"]:
            plots.plot_robustness(section, os.path.join(outdir, "robustness.png"))

    def run(self, context: Any) -> dict:
        config = context.config
        context.shared["reference"] = load_reference(config.eval.reference_report)
        main = evaluate_split(context, config.test_split, context.shared["reference"])
        log.info("test %s: clean accuracy %.4f, macro F1 %.4f; %s", config.test_split, main["clean"]["accuracy"],
                 main["clean"]["macro_f1"],
                 ", ".join(f"{n} {a:.3f}" for n, a in main["summary"]["per_corruption_accuracy"].items()))
        return {"dataset": config.dataset, "class_names": context.class_names, **main}


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


def evaluate(config: Any, eval_fns: Mapping, rvariables: Any, pipeline: Any, rng: jax.Array,
             adapt: Callable | None = None, ood_fns: Any = None) -> tuple[dict, dict | None]:
    """The report of every evaluator in config.eval.evaluators (`evaluators/common.py`).
    `adapt` (eval.adapt_batchnorm): each evaluated split is scored with BatchNorm
    statistics adapted to its own images; calibration and the seed protocol keep the
    trained statistics. `ood_fns` (evaluators.ood_fns_from_config): the OOD scores.
    Returns (report, the OOD Gaussian statistics or None)."""
    from brainjax.evaluators import common

    context = common.Context(config, eval_fns, rvariables, pipeline, rng, adapt, ood_fns)
    report = common.run_all(context)
    return report, context.shared.get("ood_stats")
