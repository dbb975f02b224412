"""Classification metrics on host numpy arrays (scikit-learn), bootstrap intervals and
the corruption summary (mean corruption accuracy, ImageNet-C style CE / mCE)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn import metrics as skm


def loss_and_accuracy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of float logits [N, K] against int labels [N]."""
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    loss = float(-logp[np.arange(len(labels)), labels].mean())
    return loss, float((logits.argmax(-1) == labels).mean())


def bootstrap_ci(labels: np.ndarray, preds: np.ndarray, num_classes: int, samples: int = 1000,
                 seed: int = 0) -> dict:
    """95% percentile-bootstrap intervals of accuracy and macro F1 (resampling examples;
    macro F1 over the classes present in `labels`, as `classification_metrics`)."""
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
    present = np.bincount(labels, minlength=num_classes) > 0
    macro = f1[:, present].mean(1)
    q = lambda v: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
    return {"accuracy": q(acc), "macro_f1": q(macro), "samples": samples}


def classification_metrics(labels: np.ndarray, logits: np.ndarray, class_names: Sequence[str],
                           ci: bool = True) -> dict:
    """Accuracy, macro F1 (with 95% bootstrap CIs), per-class P/R/F1 and the confusion
    matrix (scikit-learn). Macro F1 averages over the classes present in the split's labels
    (`macro_f1_classes`): a class with no example in a split (a 3-class test folder of a
    4-class model) would add a meaningless 0."""
    preds = logits.argmax(-1)
    ids = list(range(len(class_names)))
    present = sorted({int(v) for v in np.asarray(labels)}) or ids
    p, r, f1, support = skm.precision_recall_fscore_support(labels, preds, labels=ids, zero_division=0)
    loss, _ = loss_and_accuracy(logits, labels)
    return {
        "num_examples": int(len(labels)),
        "accuracy": float(skm.accuracy_score(labels, preds)),
        "macro_f1": float(skm.f1_score(labels, preds, labels=present, average="macro", zero_division=0)),
        "macro_f1_classes": [class_names[i] for i in present],
        "loss": loss,
        "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(class_names)},
        "confusion_matrix": skm.confusion_matrix(labels, preds, labels=ids).tolist(),
        **({"ci95": bootstrap_ci(labels, preds, len(class_names))} if ci else {}),
    }


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
