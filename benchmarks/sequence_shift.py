"""A controlled sequence shift on the phantom (issue 46): train on the T1-only site,
test on the T1 site and on the T2-only site, for each candidate recipe.

  python benchmarks/sequence_shift.py [--sites=small] [--epochs=20] [--candidates=none,contrast_remap,gin,both]

Each candidate is the default config (tiny CNN, z-scored input, the nine-corruption
recipe) on `brain_phantom/<sites>_t1` (or `t1` with --sites=full), plus:
  none            nothing more
  contrast_remap  train_augment.contrast_remap=0.5
  gin             train_augment.prob=0.5, train_augment.gin=(0.0, 1.0)
  both            the two together
  none_wide, contrast_remap_wide   none / contrast_remap with a 4x wider tiny CNN
trained with the real command (`launch.py`), then scored with `--mode=evaluate` on the T1
test split and, on a copy of the run, with --config.dataset set to the T2 site (the same
classes; evaluate builds the run's model and reads only the dataset from the flag).
Prints one row per candidate (accuracy and 95% interval on each site, in-source
validation accuracy) and writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDE = "--config.model.tiny.widths=(24, 48, 96, 192)"  # 4x the parameters of the default tiny CNN
CANDIDATES = {
    "none": [],
    "contrast_remap": ["--config.train_augment.contrast_remap=0.5"],
    "gin": ["--config.train_augment.prob=0.5", "--config.train_augment.gin=(0.0, 1.0)"],
    "both": ["--config.train_augment.contrast_remap=0.5", "--config.train_augment.prob=0.5",
             "--config.train_augment.gin=(0.0, 1.0)"],
    "none_wide": [WIDE],
    "contrast_remap_wide": [WIDE, "--config.train_augment.contrast_remap=0.5"],
}


def launch(*argv: str) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "launch.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"launch.py {' '.join(argv)} failed:\n{out.stderr[-3000:]}")


def accuracy(report_path: str) -> dict:
    report = json.load(open(report_path))
    clean = report["clean"]
    return {"accuracy": clean["accuracy"], "ci95": clean.get("ci95", {}).get("accuracy"),
            "num_examples": report["num_examples"]}


def run_candidate(name: str, flags: list[str], t1: str, t2: str, epochs: int, tmp: str, data_dir: str) -> dict:
    workdir = os.path.join(tmp, name)
    common = [f"--config.data_dir={data_dir}", "--config.eval.corruptions=()", "--config.eval.ood_dirs=()",
              "--config.eval.extra_splits=('train[90%:]',)"]
    t0 = time.perf_counter()
    launch(f"--workdir={workdir}", f"--config.dataset={t1}", f"--config.num_epochs={epochs}", *common, *flags)
    row = {"train_seconds": round(time.perf_counter() - t0, 1), "t1": accuracy(os.path.join(workdir, "report.json"))}
    report = json.load(open(os.path.join(workdir, "report.json")))
    row["validation_accuracy"] = report["other_splits"]["train[90%:]"]["clean"]["accuracy"]
    shifted = workdir + "-on-t2"
    shutil.copytree(workdir, shifted)
    launch(f"--workdir={shifted}", "--mode=evaluate", f"--config.dataset={t2}", *common)
    row["t2"] = accuracy(os.path.join(shifted, "report.json"))
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", default="small", choices=("small", "full"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    prefix = "small_" if args.sites == "small" else ""
    t1, t2 = f"brain_phantom/{prefix}t1", f"brain_phantom/{prefix}t2"
    tmp = tempfile.mkdtemp(prefix="brainjax-sequence-shift-")
    data_dir = os.path.join(tmp, "tfds")
    rows = {}
    for name in args.candidates.split(","):
        rows[name] = run_candidate(name, CANDIDATES[name], t1, t2, args.epochs, tmp, data_dir)
        r = rows[name]
        print(f"{name:15s} T1 {r['t1']['accuracy']:.3f} {r['t1']['ci95']}  T2 {r['t2']['accuracy']:.3f} "
              f"{r['t2']['ci95']}  validation {r['validation_accuracy']:.3f}  ({r['train_seconds']:.0f} s)",
              flush=True)
    result = {"sites": [t1, t2], "epochs": args.epochs, "rows": rows, "date": time.strftime("%Y-%m-%d")}
    shutil.rmtree(tmp)  # this run's own temporary folder
    if args.out:
        sys.path.insert(0, ROOT)
        from brainjax import files

        files.write_json(args.out, result, previous=files.json_with_keys("sites", "rows"))
    return result


if __name__ == "__main__":
    main()
