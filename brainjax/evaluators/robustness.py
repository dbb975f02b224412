"""The test report: clean + every corruption x severity on the test split (and any extra
splits), optionally the seed project's protocol. Returns the report dict; writing it
(report.json, plots) is `brainjax.report`'s job.

report:
  {"dataset", "split", "num_examples", "deduplicated", "class_names",
   "clean": METRICS,
   "degraded": {corruption: {severity: METRICS + {"level"}}},
   "summary": {"clean_accuracy", "mean_degraded_accuracy", "per_corruption_accuracy", ...},
   "other_splits": {split: same keys}, "seed_protocol": {...}}
METRICS = accuracy, macro F1, loss, per-class precision/recall/F1/support, confusion
matrix (rows = true class, columns = predicted; sums to the split size), 95% CIs.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from brainjax import degrade
from brainjax.errors import UserError
from brainjax.evaluators.metrics import classification_metrics, summarize
from brainjax.evaluators.predict import predict_split

log = logging.getLogger("brainjax")


def robustness_grid(eval_fns: Mapping[str | None, Callable], rvariables: Any, batches_fn: Callable,
                    rng: jax.Array, class_names: Sequence[str], corruptions: Sequence[str],
                    severities: Sequence[int]) -> tuple[dict, dict]:
    """(clean metrics, {corruption: {severity: metrics}}) over one split."""
    logits, labels, _ = predict_split(eval_fns[None], rvariables, batches_fn(), rng)
    clean = classification_metrics(labels, logits, class_names)
    degraded: dict = {}
    for ci, name in enumerate(corruptions):
        degraded[name] = {}
        for severity in severities:
            level = degrade.level_for(name, severity)
            key = jax.random.fold_in(jax.random.fold_in(rng, ci + 1), severity)
            logits, labels, _ = predict_split(eval_fns[name], rvariables, batches_fn(), key, level)
            degraded[name][str(severity)] = {"level": level, **classification_metrics(labels, logits, class_names)}
    return clean, degraded


def load_reference(path: str | None) -> dict | None:
    """The report.json of the reference model for mCE (config.eval.reference_report)."""
    if not path:
        return None
    if not os.path.isfile(path):
        raise UserError(f"config.eval.reference_report={path} does not exist; point it at the report.json "
                        "of the reference model (e.g. the same config trained with train_degrade.recipe=none)")
    with open(path) as f:
        return {**json.load(f), "source": path}


def evaluate_split(config: Any, eval_fns: Mapping, rvariables: Any, pipeline: Any, split: str, rng: jax.Array,
                   reference: dict | None = None) -> dict:
    """Clean + degraded metrics on one split, with its size and dedup status."""
    clean, degraded = robustness_grid(eval_fns, rvariables, lambda: pipeline.eval_batches(split), rng,
                                      pipeline.class_names, tuple(config.eval.corruptions),
                                      tuple(config.eval.severities))
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


def evaluate(config: Any, eval_fns: Mapping, rvariables: Any, pipeline: Any, rng: jax.Array) -> dict:
    """The report of config.test_split (+ config.eval.extra_splits, + the seed protocol)."""
    reference = load_reference(config.eval.get("reference_report"))
    main = evaluate_split(config, eval_fns, rvariables, pipeline, config.test_split, rng, reference)
    report = {"dataset": config.dataset, "class_names": pipeline.class_names, **main}
    extra = [s for s in config.eval.get("extra_splits", ()) if s != config.test_split]
    if extra:
        report["other_splits"] = {s: evaluate_split(config, eval_fns, rvariables, pipeline, s, rng, reference)
                                  for s in extra}
    if config.eval.get("seed_protocol_split"):
        sp = seed_protocol(eval_fns, rvariables, pipeline, config.eval.seed_protocol_split, rng)
        report["seed_protocol"] = sp
        log.info("seed protocol on %s: mixed accuracy %.4f (clean %.4f, degraded %.4f)", sp["split"],
                 sp["mixed"]["accuracy"], sp["clean"]["accuracy"], sp["degraded"]["accuracy"])
    log.info("test %s: clean accuracy %.4f, macro F1 %.4f; %s", config.test_split, main["clean"]["accuracy"],
             main["clean"]["macro_f1"],
             ", ".join(f"{n} {a:.3f}" for n, a in main["summary"]["per_corruption_accuracy"].items()))
    return report
