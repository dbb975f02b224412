"""Host cost of the input pipeline per process, for P = 1, 2, 4 processes (issue 23).

Each of the P processes of a simulated run builds the pipeline of its process index
(`InputPipeline(..., process_index=p, process_count=P)`: exactly what it reads in a real
multi-process run; no accelerator or jax.distributed needed), runs two training epochs and
one evaluation pass over the validation and test splits, and reports:
  decoded_epoch1 / decoded_epoch2  images decoded by the training epochs (counted by a
                                   counter inside the decode op itself)
  decoded_total                    after evaluation as well
  peak_rss_mb                      the process's peak resident memory
The same measurement runs on other code (`--root NAME=PATH`, e.g. a git worktree of an
older commit) for a before/after table in one run:

  git worktree add /tmp/before 626b93e
  python benchmarks/input_scaling.py --config=configs/default.py \\
      --root after=. --root before=/tmp/before --out=input_scaling.json
  python benchmarks/input_scaling.py --config=configs/sartaj_robust.py \\
      --config_override manual_dir=../shared/data/sartaj --root after=. --root before=/tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile


def worker(root: str, config_path: str, overrides: list[str], data_dir: str, p: int, count: int) -> dict:
    sys.path.insert(0, root)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import importlib.util

    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    from brainjax.data import pipeline as pipeline_lib

    spec = importlib.util.spec_from_file_location("bench_config", os.path.join(root, config_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.data_dir = data_dir
    for item in overrides:
        key, value = item.split("=", 1)
        setattr(config, key, value)
    counter = tf.Variable(0, dtype=tf.int64)
    decode = pipeline_lib.to_gray_resized

    def counted(image, size):
        with tf.control_dependencies([counter.assign_add(1)]):
            return decode(image, size)

    pipeline_lib.to_gray_resized = counted  # the pipeline's decode map looks it up when it is traced
    p_line = pipeline_lib.InputPipeline(config, num_local_devices=1, process_index=p, process_count=count)
    out = {}
    for epoch in range(2):
        for _ in p_line.train_epoch(config.train_split, epoch, 0):
            pass
        out[f"decoded_epoch{epoch + 1}"] = int(counter.numpy()) - sum(out.values())
    for split in (config.val_split, config.test_split):
        for _ in p_line.eval_batches(split):
            pass
    out["decoded_total"] = int(counter.numpy())
    out["train_examples"] = p_line.num_examples(config.train_split)
    out["all_examples"] = sum(p_line.num_examples(s) for s in {config.train_split, config.val_split, config.test_split})
    out["global_batch"] = int(config.batch_size)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/default.py")
    ap.add_argument("--config_override", action="append", default=[], help="field=value (string fields)")
    ap.add_argument("--root", action="append", default=[], help="NAME=PATH of a brainjax checkout")
    ap.add_argument("--processes", default="1,2,4")
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--out", default="input_scaling.json")
    ap.add_argument("--worker", nargs=3, metavar=("ROOT", "P", "COUNT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    data_dir = args.data_dir or os.path.join(tempfile.gettempdir(), "brainjax_input_scaling_tfds")
    if args.worker:
        root, p, count = args.worker
        print("RESULT " + json.dumps(worker(root, args.config, args.config_override, data_dir, int(p), int(count))))
        return
    roots = dict(r.split("=", 1) for r in (args.root or ["current=."]))
    table = {}
    for name, root in roots.items():
        for count in (int(c) for c in args.processes.split(",")):
            rows = []
            for p in range(count):  # one at a time: each process's own peak, no contention
                cmd = [sys.executable, __file__, "--config", args.config, "--data_dir", data_dir,
                       "--worker", os.path.abspath(root), str(p), str(count)]
                for o in args.config_override:
                    cmd += ["--config_override", o]
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.abspath(root))
                line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
                if out.returncode or not line:
                    raise SystemExit(f"{name} P={count} p={p} failed:\n{out.stderr[-3000:]}")
                rows.append(json.loads(line[0][len("RESULT "):]))
            r0 = rows[0]
            table[f"{name} P={count}"] = {
                "decoded_epoch1_per_process": [r["decoded_epoch1"] for r in rows],
                "decoded_epoch2_per_process": [r["decoded_epoch2"] for r in rows],
                "decoded_total_per_process": [r["decoded_total"] for r in rows],
                "target_decoded_epoch1": r0["train_examples"] / count + r0["global_batch"],
                "peak_rss_mb_per_process": [round(r["peak_rss_mb"]) for r in rows],
                "train_examples": r0["train_examples"], "all_examples": r0["all_examples"]}
            print(name, f"P={count}", json.dumps(table[f"{name} P={count}"]), flush=True)
    with open(args.out, "w") as f:
        json.dump({"config": args.config, "overrides": args.config_override, "rows": table}, f, indent=2)


if __name__ == "__main__":
    main()
