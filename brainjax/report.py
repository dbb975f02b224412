"""The files an evaluation leaves for predict and export: report.json, calibration.json
and ood_stats.npz (the figures are each evaluator's own, `Evaluator.plot`).

Written by process 0 only; every process holds the same report (evaluation gathers all
processes' predictions), so nothing is lost by writing once.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from brainjax import files, parallel, schema

log = logging.getLogger("brainjax")


def write_report(report: dict, workdir: str, ood_stats: dict | None = None) -> None:
    """<workdir>/report.json (process 0 only; written to a temporary name and renamed, so
    it is never half-written); with calibration, calibration.json (and ood_stats.npz with
    the OOD statistics): what predict and export need."""
    if not parallel.is_main_process():
        return
    path = os.path.join(workdir, schema.REPORT_FILE)
    _write_json(report, path)
    if "calibration" in report:
        # What --mode=predict needs (temperature, abstention thresholds), next to the checkpoints.
        _write_json(schema.calibration_record(report), os.path.join(workdir, schema.CALIBRATION_FILE))
    if ood_stats is not None:
        save_ood_stats(ood_stats, workdir)
    log.info("wrote %s", path)


OOD_STATS_FILE = schema.OOD_STATS_FILE


def save_ood_stats(stats: dict, workdir: str) -> str:
    """<workdir>/ood_stats.npz (class means, precision, counts): what predict and export
    need to compute the OOD score. Atomic like the JSON files."""
    arrays = {k: np.asarray(v) for k, v in stats.items()}
    return files.write_npz(os.path.join(workdir, OOD_STATS_FILE), arrays)


def _write_json(obj: dict, path: str) -> None:
    """Atomic (files.write_json): a temporary name, then rename."""
    files.write_json(path, obj)
