"""Unseen sequences on real data (issue 46's second criterion): for each candidate recipe,
train configs/sartaj_tiny.py on Sartaj, then predict every slice of
../shared/data/other_sequences (normal brains from other scanners and sequences: never
trained on) and count the fraction predicted no_tumor, an accuracy on unseen sequences.
Also reports test_dedup (Sartaj Testing images from other sources) and validation accuracy.

  python benchmarks/other_sequences.py [--candidates=none,contrast_remap,gin,both] [--data_dir=DIR]

Candidates as in benchmarks/sequence_shift.py. The fraction's 95% interval is a
percentile bootstrap over the slices.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from sequence_shift import CANDIDATES, launch  # noqa: E402

OTHER = os.path.join(ROOT, "..", "shared", "data", "other_sequences")
SARTAJ = os.path.join(ROOT, "..", "shared", "data", "sartaj")


def no_tumor_fraction(csv_path: str) -> dict:
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    hit = np.array([r["predicted"] == "no_tumor" for r in rows], float)
    boot = np.random.default_rng(0).choice(hit, (1000, len(hit))).mean(1)
    return {"fraction": float(hit.mean()), "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "slices": len(hit)}


def run_candidate(name: str, flags: list[str], tmp: str, data_dir: str) -> dict:
    workdir = os.path.join(tmp, name)
    t0 = time.perf_counter()
    launch("--config=configs/sartaj_tiny.py", f"--workdir={workdir}", f"--config.data_dir={data_dir}",
           f"--config.manual_dir={SARTAJ}", "--config.eval.corruptions=()", "--config.eval.seed_protocol_split=",
           *flags)
    report = json.load(open(os.path.join(workdir, "report.json")))
    out = os.path.join(tmp, f"{name}.csv")
    launch(f"--workdir={workdir}", "--mode=predict", f"--images={OTHER}", f"--predictions={out}")
    return {"train_seconds": round(time.perf_counter() - t0, 1),
            "test_dedup": report["clean"]["accuracy"], "test_dedup_ci95": report["clean"]["ci95"]["accuracy"],
            "validation": report["other_splits"]["validation"]["clean"]["accuracy"],
            "validation_ci95": report["other_splits"]["validation"]["clean"]["ci95"]["accuracy"],
            "other_sequences_no_tumor": no_tumor_fraction(out)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not (os.path.isdir(OTHER) and os.path.isdir(SARTAJ)):
        raise SystemExit(f"needs {SARTAJ} and {OTHER}")
    tmp = tempfile.mkdtemp(prefix="brainjax-other-sequences-")
    data_dir = args.data_dir or os.path.join(tmp, "tfds")
    rows = {}
    for name in args.candidates.split(","):
        r = rows[name] = run_candidate(name, CANDIDATES[name], tmp, data_dir)
        o = r["other_sequences_no_tumor"]
        print(f"{name:15s} other_sequences no_tumor {o['fraction']:.3f} {o['ci95']}  test_dedup {r['test_dedup']:.3f} "
              f"{r['test_dedup_ci95']}  validation {r['validation']:.3f} {r['validation_ci95']}  "
              f"({r['train_seconds']:.0f} s)", flush=True)
    result = {"rows": rows, "date": time.strftime("%Y-%m-%d")}
    shutil.rmtree(tmp)
    if args.out:
        sys.path.insert(0, ROOT)
        from brainjax import files

        files.write_json(args.out, result, previous=files.json_with_keys("rows"))
    return result


if __name__ == "__main__":
    main()
