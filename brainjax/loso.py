"""--mode=loso: leave one source out. For each source of config.sources, an ordinary,
resumable training run with holdout_source set to it, in `<workdir>/holdout-<name>/`;
then `<workdir>/loso.json` and `loso.md`, one row per held-out source.

A rerun resumes: a sub-run whose report.json already scores its held-out source is read,
not retrained; an interrupted one resumes from its last checkpoint. Every sub-run's
config is checked before the first trains, so a bad source costs no training.
"""

from __future__ import annotations

import logging
import os

import ml_collections

from brainjax import files, preflight, schema, train
from brainjax.errors import UserError

log = logging.getLogger("brainjax")
PREFIX = "holdout-"


def sub_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    sub = ml_collections.ConfigDict(config.to_dict())
    sub.holdout_source = name
    return sub


def finished_report(workdir: str, name: str) -> dict | None:
    """The sub-run's report.json when it is complete (it scores `name` as held out)."""
    path = os.path.join(workdir, "report.json")
    if not os.path.isfile(path):
        return None
    report = schema.read_report(path, "a leave-one-source-out run's report")
    return report if schema.held_out_source(report) == name else None


def markdown(rows: list[dict]) -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    count = lambda v: "unknown" if v is None else str(v)
    lines = ["# Leave one source out", "",
             "| held out | images | accuracy | 95% CI | macro F1 | mean corruption acc. | copies removed | OOD AUROC | "
             "in-source test acc. |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = "[" + ", ".join(f"{v:.3f}" for v in r["ci95"]) + "]" if r["ci95"] else ""
        lines.append(f"| {r['held_out']} | {r['num_examples']} | {fmt(r['accuracy'])} | {ci} | {fmt(r['macro_f1'])} | "
                     f"{fmt(r['mean_degraded_accuracy'])} | {count(r['copies_of_training_removed'])} | {fmt(r['ood_auroc'])} | "
                     f"{fmt(r['in_source_test_accuracy'])} |")
    return "\n".join(lines) + "\n"


def run_loso(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Trains (or resumes, or reads) one run per held-out source; writes loso.json / .md.
    Returns the rows."""
    from brainjax.data import multi_source  # tfds: only --mode=loso needs it (predict runs without TensorFlow)

    sources = multi_source.source_list(config)
    if len(sources) < 2:
        raise UserError("--mode=loso needs config.sources with at least two sources (it holds each out in turn)")
    names = [s["name"] for s in sources]
    runs = {name: (sub_config(config, name), os.path.join(workdir, PREFIX + name)) for name in names}
    for sub, path in runs.values():  # every sub-run checked before the first one trains
        preflight.check_workdir(path, "train")
        preflight.check(sub, path, "train")
    rows = []
    for name, (sub, path) in runs.items():
        report = finished_report(path, name)
        if report is None:
            log.info("loso: training with %s held out, in %s", name, path)
            report = train.train_and_evaluate(sub, path)
        else:
            log.info("loso: %s already holds a finished run with %s held out; read, not retrained", path, name)
        rows.append(schema.holdout_row(name, report))
    files.write_json(os.path.join(workdir, "loso.json"), {"sources": names, "rows": rows},
                     previous=files.json_with_keys("sources", "rows"))
    files.write_text(os.path.join(workdir, "loso.md"), markdown(rows))
    for r in rows:
        log.info("loso: %s held out: accuracy %.4f, OOD AUROC %s", r["held_out"], r["accuracy"], r["ood_auroc"])
    return rows
