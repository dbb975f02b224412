"""The figures of a run: the only user of matplotlib (imported on first use, with the
Agg backend, so importing brainjax never needs a display). Each evaluator draws its own
section's figure with these (`Evaluator.plot`); predict draws Grad-CAM overlays and the
corruption gallery. Every PNG goes through the one writer (`files.write_figure`)."""

from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np

from brainjax import degrade, files


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str, dpi: int) -> None:
    """A matplotlib figure as PNG through the one writer, then closed."""
    plt = pyplot()
    try:
        files.write_figure(path, fig, dpi)
    finally:
        plt.close(fig)


def save_overlay(image: np.ndarray, heatmap: np.ndarray, path: str, title: str = "") -> None:
    """The grayscale scan with a Grad-CAM heatmap ([0, 1]) on top, and the scan alone."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.4))
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("scan", fontsize=9)
    axes[1].imshow(image, cmap="gray", vmin=0, vmax=1)
    axes[1].imshow(heatmap, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axes[1].set_title(title or "Grad-CAM", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str, title: str = "") -> None:
    plt = pyplot()
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
    save_figure(fig, path, dpi=110)


def plot_robustness(report: dict, path: str) -> None:
    """Accuracy vs severity per corruption (left) and the corruption x severity grid (right)."""
    plt = pyplot()
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
    save_figure(fig, path, dpi=110)


def plot_reliability(cal: dict, path: str) -> None:
    """Reliability diagram of the clean test split: accuracy per confidence bin, before
    and after temperature scaling (the diagonal is perfect calibration)."""
    plt = pyplot()
    bins = cal["bins"]
    centres = (np.arange(bins) + 0.5) / bins
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    for name, width, colour in (("before", 0.9, "tab:red"), ("after", 0.5, "tab:blue")):
        b = cal["reliability"][name]
        has = np.asarray(b["count"]) > 0
        ece = cal["clean"][f"ece_{name}"]
        label = f"{name} (T={cal['temperature']:.2f}, ECE {ece:.3f})" if name == "after" else f"{name} (ECE {ece:.3f})"
        ax.bar(centres[has], np.asarray(b["accuracy"])[has], width=width / bins, alpha=0.6, color=colour, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability, clean test split", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def plot_risk_coverage(sel: dict, path: str) -> None:
    """Accuracy of the kept predictions vs the share kept, clean and over the degraded grid."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for rule, entry in sel.get("rules", {sel["rule"]: sel}).items():
        for name, curve in entry["curves"].items():
            ax.plot(curve["coverage"], curve["accuracy"], label=f"{name}, {rule}",
                    ls="-" if rule == "max_prob" else "--")
    ax.axvline(0.8, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("coverage (share of predictions kept)")
    ax.set_ylabel("accuracy of kept predictions")
    ax.set_title("risk-coverage (test split)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def plot_ood(section: dict, path: str) -> None:
    """Histograms of the chosen OOD score: validation (in distribution) vs each OOD set,
    with the fitted threshold."""
    plt = pyplot()
    hist = section["histogram"]
    edges = np.asarray(hist["edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for name, counts in ((k, v) for k, v in hist.items() if k != "edges"):
        counts = np.asarray(counts, np.float64)
        label = os.path.basename(name) if os.path.isabs(name) else name  # eval.ood_dirs are keyed by full path
        ax.step(centres, counts / max(counts.sum(), 1.0), where="mid", label=label, lw=1.4)
    ax.axvline(section["threshold"], color="black", ls="--", lw=1, label=f"threshold (keeps {section['keep']:.0%} of val)")
    ax.set_xlabel(f"{section['method']} OOD score (higher = further from training)")
    ax.set_ylabel("share of the set")
    ax.legend(fontsize=8)
    ax.set_title("out-of-distribution score", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def gallery(image: np.ndarray, path: str, names: Sequence[str] = degrade.NAMES, seed: int = 0) -> None:
    """Every corruption at every severity on one image (float [H, W, 1] in [0, 1]): rows are
    corruptions, columns clean + severities 1..5. Shows users what the models train against."""
    import jax.numpy as jnp

    plt = pyplot()
    n_sev = len(next(iter(degrade.SEVERITIES.values())))
    fig, axes = plt.subplots(len(names), n_sev + 1, figsize=(1.6 * (n_sev + 1), 1.6 * len(names)))
    # One compiled call per corruption for all severities (the level is per example);
    # each severity gets the key `corrupt(x, name, s, key(seed))` would use.
    batch = jnp.repeat(jnp.asarray(image, jnp.float32)[None], n_sev, axis=0)
    keys = jnp.repeat(jax.random.split(jax.random.key(seed), 1), n_sev, axis=0)
    apply = jax.jit(degrade.apply, static_argnums=2)
    for r, name in enumerate(names):
        levels = jnp.asarray([degrade.level_for(name, s) for s in range(1, n_sev + 1)], jnp.float32)
        row = [np.asarray(image)] + list(np.asarray(apply(batch, keys, name, levels)))
        for c, im in enumerate(row):
            ax = axes[r, c]
            ax.imshow(im[..., 0], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("clean" if c == 0 else f"severity {c}", fontsize=8)
        axes[r, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
