"""Evaluation: clean and degraded test metrics, report.json and plots.

report.json:
  {"dataset", "split", "num_examples", "class_names",
   "clean": METRICS,
   "degraded": {corruption: {severity: METRICS + {"level"}}},
   "summary": {"clean_accuracy", "mean_degraded_accuracy", "per_corruption_accuracy"}}
METRICS = accuracy, macro_f1, loss, per-class precision/recall/F1/support, confusion
matrix (rows = true class, columns = predicted; sums to the split size).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from sklearn import metrics as skm

from brainjax import degrade

log = logging.getLogger("brainjax")


def classification_metrics(labels: np.ndarray, logits: np.ndarray, class_names: Sequence[str]) -> dict:
    """Accuracy, macro F1, per-class P/R/F1 and the confusion matrix (scikit-learn)."""
    from brainjax.train import host_loss_and_accuracy

    preds = logits.argmax(-1)
    ids = list(range(len(class_names)))
    p, r, f1, support = skm.precision_recall_fscore_support(labels, preds, labels=ids, zero_division=0)
    loss, _ = host_loss_and_accuracy(logits, labels)
    return {
        "num_examples": int(len(labels)),
        "accuracy": float(skm.accuracy_score(labels, preds)),
        "macro_f1": float(skm.f1_score(labels, preds, labels=ids, average="macro", zero_division=0)),
        "loss": loss,
        "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(class_names)},
        "confusion_matrix": skm.confusion_matrix(labels, preds, labels=ids).tolist(),
    }


def robustness_grid(eval_fns: Mapping[str | None, Callable], rstate: Any, batches_fn: Callable,
                    rng: jax.Array, class_names: Sequence[str], corruptions: Sequence[str],
                    severities: Sequence[int]) -> tuple[dict, dict]:
    """(clean metrics, {corruption: {severity: metrics}}) over one split."""
    from brainjax.train import predict_split

    logits, labels, _ = predict_split(eval_fns[None], rstate, batches_fn(), rng)
    clean = classification_metrics(labels, logits, class_names)
    degraded: dict = {}
    for ci, name in enumerate(corruptions):
        degraded[name] = {}
        for severity in severities:
            level = degrade.level_for(name, severity)
            key = jax.random.fold_in(jax.random.fold_in(rng, ci + 1), severity)
            logits, labels, _ = predict_split(eval_fns[name], rstate, batches_fn(), key, level)
            degraded[name][str(severity)] = {"level": level, **classification_metrics(labels, logits, class_names)}
    return clean, degraded


def summarize(clean: dict, degraded: dict) -> dict:
    per = {name: float(np.mean([m["accuracy"] for m in sev.values()])) for name, sev in degraded.items()}
    return {"clean_accuracy": clean["accuracy"], "clean_macro_f1": clean["macro_f1"],
            "mean_degraded_accuracy": float(np.mean(list(per.values()))) if per else None,
            "per_corruption_accuracy": per}


def evaluate(config: Any, eval_fns: Mapping, rstate: Any, pipeline: Any, workdir: str, rng: jax.Array) -> dict:
    """Evaluates on config.test_split; writes report.json and the plots (process 0)."""
    split = config.test_split
    severities = tuple(config.eval.severities)
    clean, degraded = robustness_grid(eval_fns, rstate, lambda: pipeline.eval_batches(split), rng,
                                      pipeline.class_names, tuple(config.eval.corruptions), severities)
    report = {"dataset": config.dataset, "split": split, "num_examples": pipeline.num_examples(split),
              "class_names": pipeline.class_names, "clean": clean, "degraded": degraded,
              "summary": summarize(clean, degraded)}
    if jax.process_index() == 0:
        write_report(report, workdir)
    log.info("test %s: clean accuracy %.4f, macro F1 %.4f; %s", split, clean["accuracy"], clean["macro_f1"],
             ", ".join(f"{n} {a:.3f}" for n, a in report["summary"]["per_corruption_accuracy"].items()))
    log.info("wrote %s", os.path.join(workdir, "report.json"))
    return report


def write_report(report: dict, workdir: str) -> None:
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    plot_confusion(np.asarray(report["clean"]["confusion_matrix"]), report["class_names"],
                   os.path.join(workdir, "confusion_matrix.png"), title=f"{report['dataset']} {report['split']} (clean)")
    if report["degraded"]:
        plot_robustness(report, os.path.join(workdir, "robustness.png"))


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.4))
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_robustness(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, sev in report["degraded"].items():
        xs = [0] + [int(s) for s in sev]
        ys = [report["clean"]["accuracy"]] + [m["accuracy"] for m in sev.values()]
        ax.plot(xs, ys, marker="o", label=name)
    ax.axhline(1.0 / len(report["class_names"]), color="grey", ls=":", label="chance")
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"robustness: {report['dataset']} {report['split']}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
