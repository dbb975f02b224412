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


def bootstrap_ci(labels: np.ndarray, preds: np.ndarray, num_classes: int, samples: int = 1000,
                 seed: int = 0) -> dict:
    """95% percentile-bootstrap intervals of accuracy and macro F1 (resampling examples)."""
    n = len(labels)
    if n == 0:
        return {}
    idx = np.random.default_rng(seed).integers(0, n, (samples, n))
    y, p = labels[idx], preds[idx]
    acc = (y == p).mean(1)
    cm = np.zeros((samples, num_classes, num_classes))
    np.add.at(cm, (np.arange(samples)[:, None], y, p), 1)
    tp = np.einsum("bii->bi", cm)
    denom = cm.sum(1) + cm.sum(2)  # predicted + true counts
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)  # sklearn: 0 where undefined
    macro = f1.mean(1)
    q = lambda v: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
    return {"accuracy": q(acc), "macro_f1": q(macro), "samples": samples}


def classification_metrics(labels: np.ndarray, logits: np.ndarray, class_names: Sequence[str],
                           ci: bool = True) -> dict:
    """Accuracy, macro F1 (with 95% bootstrap CIs), per-class P/R/F1 and the confusion
    matrix (scikit-learn)."""
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
        **({"ci95": bootstrap_ci(labels, preds, len(class_names))} if ci else {}),
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


def summarize(clean: dict, degraded: dict, reference: dict | None = None) -> dict:
    """Mean corruption accuracy, and with a reference report the ImageNet-C style
    corruption errors: CE_c = sum_s err(c, s) / sum_s err_ref(c, s); mCE = mean_c CE_c;
    relative mCE uses (err - clean err) in numerator and denominator."""
    per = {name: float(np.mean([m["accuracy"] for m in sev.values()])) for name, sev in degraded.items()}
    out = {"clean_accuracy": clean["accuracy"], "clean_macro_f1": clean["macro_f1"],
           "mean_degraded_accuracy": float(np.mean(list(per.values()))) if per else None,
           "per_corruption_accuracy": per}
    if reference is not None:
        ce, rel = {}, {}
        ref_clean_err = 1 - reference["clean"]["accuracy"]
        for name, sev in degraded.items():
            ref = reference["degraded"].get(name)
            if not ref or set(ref) != set(sev):
                continue
            err = sum(1 - sev[s]["accuracy"] for s in sev)
            ref_err = sum(1 - ref[s]["accuracy"] for s in sev)
            ce[name] = err / max(ref_err, 1e-9)
            rel_ref = ref_err - len(sev) * ref_clean_err
            rel[name] = (err - len(sev) * (1 - clean["accuracy"])) / rel_ref if abs(rel_ref) > 1e-9 else None
        out["corruption_error"] = ce
        out["mCE"] = float(np.mean(list(ce.values()))) if ce else None
        rel_values = [v for v in rel.values() if v is not None]
        out["relative_mCE"] = float(np.mean(rel_values)) if rel_values else None
        out["reference"] = reference.get("source", "reference report")
    return out


def load_reference(path: str | None) -> dict | None:
    """The report.json of the reference model for mCE (config.eval.reference_report)."""
    if not path:
        return None
    if not os.path.isfile(path):
        from brainjax.errors import UserError

        raise UserError(f"config.eval.reference_report={path} does not exist; point it at the report.json "
                        "of the reference model (e.g. the same config trained with train_degrade.recipe=none)")
    with open(path) as f:
        return {**json.load(f), "source": path}


def evaluate_split(config: Any, eval_fns: Mapping, rstate: Any, pipeline: Any, split: str, rng: jax.Array,
                   reference: dict | None = None) -> dict:
    """Clean + degraded metrics on one split, with its size and dedup status."""
    clean, degraded = robustness_grid(eval_fns, rstate, lambda: pipeline.eval_batches(split), rng,
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


def seed_protocol(eval_fns: Mapping, rstate: Any, pipeline: Any, split: str, rng: jax.Array) -> dict:
    """The seed project's evaluation: every image of `split` plus one degraded copy (a
    random 1-3 of noise/blur/downsampling, fixed per image), scored on the mixed set, and,
    unlike the seed, also on the clean and the degraded halves alone."""
    from brainjax.train import predict_split

    names = pipeline.class_names
    key = jax.random.fold_in(rng, 10_000)
    clean_logits, labels, _ = predict_split(eval_fns[None], rstate, pipeline.eval_batches(split), key)
    deg_logits, deg_labels, _ = predict_split(eval_fns[degrade.SEED_CHAIN], rstate, pipeline.eval_batches(split), key)
    return {"split": split, "num_examples": int(len(labels)),
            "clean": classification_metrics(labels, clean_logits, names),
            "degraded": classification_metrics(deg_labels, deg_logits, names),
            "mixed": classification_metrics(np.concatenate([labels, deg_labels]),
                                            np.concatenate([clean_logits, deg_logits]), names)}


def evaluate(config: Any, eval_fns: Mapping, rstate: Any, pipeline: Any, workdir: str, rng: jax.Array) -> dict:
    """Evaluates on config.test_split (+ config.eval.extra_splits); writes report.json and
    the plots (process 0)."""
    reference = load_reference(config.eval.get("reference_report"))
    main = evaluate_split(config, eval_fns, rstate, pipeline, config.test_split, rng, reference)
    report = {"dataset": config.dataset, "class_names": pipeline.class_names, **main}
    extra = [s for s in config.eval.get("extra_splits", ()) if s != config.test_split]
    if extra:
        report["other_splits"] = {s: evaluate_split(config, eval_fns, rstate, pipeline, s, rng, reference)
                                  for s in extra}
    if config.eval.get("seed_protocol_split"):
        sp = seed_protocol(eval_fns, rstate, pipeline, config.eval.seed_protocol_split, rng)
        report["seed_protocol"] = sp
        log.info("seed protocol on %s: mixed accuracy %.4f (clean %.4f, degraded %.4f)", sp["split"],
                 sp["mixed"]["accuracy"], sp["clean"]["accuracy"], sp["degraded"]["accuracy"])
    if jax.process_index() == 0:
        write_report(report, workdir)
    log.info("test %s: clean accuracy %.4f, macro F1 %.4f; %s", config.test_split, main["clean"]["accuracy"],
             main["clean"]["macro_f1"],
             ", ".join(f"{n} {a:.3f}" for n, a in main["summary"]["per_corruption_accuracy"].items()))
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
    """Accuracy vs severity per corruption (left) and the corruption x severity grid (right)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["degraded"])
    severities = list(next(iter(report["degraded"].values())))
    grid = np.array([[report["degraded"][n][s]["accuracy"] for s in severities] for n in names])
    fig, (ax, hm) = plt.subplots(1, 2, figsize=(12, 0.45 * len(names) + 3.2),
                                 gridspec_kw={"width_ratios": [1.2, 1]})
    for name, row in zip(names, grid):
        ax.plot([0] + [int(s) for s in severities], [report["clean"]["accuracy"], *row], marker="o", label=name)
    ax.axhline(1.0 / len(report["class_names"]), color="grey", ls=":", label="chance")
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    im = hm.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            hm.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if grid[i, j] < 0.6 else "black")
    hm.set_xticks(range(len(severities)), severities)
    hm.set_yticks(range(len(names)), names, fontsize=8)
    hm.set_xlabel("severity")
    fig.colorbar(im, ax=hm, fraction=0.05)
    summary = report["summary"]
    title = f"robustness: {report['dataset']} {report['split']}, clean {summary['clean_accuracy']:.3f}"
    if summary.get("mean_degraded_accuracy") is not None:
        title += f", mean corruption accuracy {summary['mean_degraded_accuracy']:.3f}"
    if summary.get("mCE") is not None:
        title += f", mCE {summary['mCE']:.3f}"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gallery(image: np.ndarray, path: str, names: Sequence[str] = degrade.NAMES, seed: int = 0) -> None:
    """Every corruption at every severity on one image (float [H, W, 1] in [0, 1]): rows are
    corruptions, columns clean + severities 1..5. Shows users what the models train against."""
    import jax.numpy as jnp
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_sev = len(next(iter(degrade.SEVERITIES.values())))
    fig, axes = plt.subplots(len(names), n_sev + 1, figsize=(1.6 * (n_sev + 1), 1.6 * len(names)))
    x = jnp.asarray(image, jnp.float32)[None]
    for r, name in enumerate(names):
        row = [np.asarray(image)] + [np.asarray(degrade.corrupt(x, name, s, jax.random.key(seed))[0])
                                     for s in range(1, n_sev + 1)]
        for c, im in enumerate(row):
            ax = axes[r, c]
            ax.imshow(im[..., 0], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("clean" if c == 0 else f"severity {c}", fontsize=8)
        axes[r, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
