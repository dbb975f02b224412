"""Peak memory of --mode=predict does not grow with the number of files (issue 44).

  python benchmarks/predict_memory.py [--small=500] [--large=5000] [--repeats=2]

Trains the smoke config for one epoch (or takes --workdir=<a trained run>), writes
`--large` PNG slices, then runs the real command, `launch.py --mode=predict
--images=<folder>`, on `--small` and on `--large` of them, alternating (small, large,
small, large, ...), each in its own process, and reports each run's peak RSS (the process's
own ru_maxrss) and files per second. Target: the peak with `--large` files within 1.2x of
the peak with `--small`.
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
sys.path.insert(0, ROOT)

# Runs launch.py in this process and leaves its peak RSS (KiB) in $PEAK_FILE.
WRAPPER = ("import os, resource, runpy, sys\n"
           "sys.argv = sys.argv[1:]\n"
           "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
           "finally:\n    open(os.environ['PEAK_FILE'], 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n")


def make_files(folder: str, count: int) -> None:
    from PIL import Image

    from brainjax.data import phantom

    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        Image.fromarray(phantom.generate_slice(3, i, i % 4, 64)[..., 0]).save(os.path.join(folder, f"{i:05d}.png"))


def train(workdir: str, data_dir: str) -> None:
    subprocess.run([sys.executable, "launch.py", f"--workdir={workdir}", "--config=configs/smoke.py",
                    "--config.num_epochs=1", f"--config.data_dir={data_dir}"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def predict_once(workdir: str, folder: str, peak_file: str) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one --mode=predict over every file in `folder`."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", WRAPPER, "launch.py", f"--workdir={workdir}", "--mode=predict",
                    f"--images={folder}"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PEAK_FILE": peak_file, "TF_CPP_MIN_LOG_LEVEL": "3"})
    seconds = time.perf_counter() - t0
    return int(open(peak_file).read()) / 1024, seconds


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=500)
    ap.add_argument("--large", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="a trained run (default: train the smoke config)")
    ap.add_argument("--out", default=None, help="also write the result here as JSON")
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="brainjax-predict-memory-")
    workdir = args.workdir or os.path.join(tmp, "run")
    if not args.workdir:
        train(workdir, os.path.join(tmp, "tfds"))
    folders = {"small": os.path.join(tmp, "small"), "large": os.path.join(tmp, "large")}
    make_files(folders["large"], args.large)
    os.makedirs(folders["small"])
    for name in sorted(os.listdir(folders["large"]))[:args.small]:
        os.symlink(os.path.join(folders["large"], name), os.path.join(folders["small"], name))
    runs: dict = {"small": [], "large": []}
    for _ in range(args.repeats):
        for size in ("small", "large"):
            peak, seconds = predict_once(workdir, folders[size], os.path.join(tmp, "peak"))
            count = args.small if size == "small" else args.large
            runs[size].append({"peak_rss_mib": round(peak, 1), "seconds": round(seconds, 2),
                               "files_per_second": round(count / seconds, 1)})
            print(f"{count} files: peak RSS {peak:.0f} MiB, {seconds:.1f} s ({count / seconds:.0f} files/s)",
                  flush=True)
    peak = {k: max(r["peak_rss_mib"] for r in v) for k, v in runs.items()}
    result = {"files": {"small": args.small, "large": args.large}, "runs": runs,
              "peak_ratio_large_vs_small": round(peak["large"] / peak["small"], 3), "target": 1.2,
              "date": time.strftime("%Y-%m-%d")}
    print(json.dumps({k: result[k] for k in ("files", "peak_ratio_large_vs_small", "target")}))
    shutil.rmtree(tmp)  # this run's own temporary folder
    if args.out:
        from brainjax import files

        files.write_json(args.out, result, previous=files.json_with_keys("peak_ratio_large_vs_small"))
    return result


if __name__ == "__main__":
    main()
