"""XLA CPU flag sweep for the VGG16 frozen / fine-tune train steps (issue 6, CPU speed).

  python benchmarks/xla_flag_sweep.py [--size 112] [--kinds frozen,finetune]

Each flag set runs in a fresh subprocess (XLA reads XLA_FLAGS once per process), one after
the other, so the figures are side by side on the same machine state. Prints img/s per
flag set and the ratio to the first (default) set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

FLAG_SETS = {
    "default": "",
    "ynn_conv": "--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution",
    "ynn_off": "--xla_cpu_experimental_ynn_fusion_type=",
    "vector_width_512": "--xla_cpu_prefer_vector_width=512",
    "onednn_custom_call": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "xnnpack_off": "--xla_cpu_use_xnnpack=false",
    "ynn_conv_only": "--xla_cpu_experimental_ynn_fusion_type=individual_convolution",
    "ynn_off_xnn_off": "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_xnnpack=false",
    "ynn_off_onednn": "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_onednn=true",
    "ynn_off_vw512": "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_prefer_vector_width=512",
}

CHILD = r"""
import json, sys, functools
import jax, numpy as np
sys.path[:0] = ['.', 'benchmarks']
import benchmark
r = benchmark.flax_rates(BACKBONE, SIZE, 32, 3, kinds=KINDS)
print('RESULT ' + json.dumps(r))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="vgg16")
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--kinds", default="frozen")
    ap.add_argument("--sets", default=",".join(FLAG_SETS))
    args = ap.parse_args()
    kinds = tuple(args.kinds.split(","))
    base = None
    print(f"{args.backbone}@{args.size}, batch 32", flush=True)
    for name in args.sets.split(","):
        env = dict(os.environ, XLA_FLAGS=FLAG_SETS[name], TF_CPP_MIN_LOG_LEVEL="3", BRAINJAX_XLA_DEFAULTS="0")
        code = CHILD.replace("BACKBONE", repr(args.backbone)).replace("SIZE", str(args.size)).replace("KINDS", repr(kinds))
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            print(f"{name:20s} failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        r = json.loads(line[7:])
        base = base or r
        figures = " | ".join(f"{k} {r[k + '_img_s']:.1f} img/s ({r[k + '_img_s'] / base[k + '_img_s']:.2f}x)"
                             for k in kinds if k + "_img_s" in r)
        print(f"{name:20s} {figures}", flush=True)


if __name__ == "__main__":
    main()
