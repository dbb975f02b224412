"""How much the on-device corruption chain adds to a train step (issue 5 speed target).

  python benchmarks/degrade_overhead.py [--repeats=3] [--steps=10]

For each model setting it times the same jitted train step with recipe 'none', the seed
chain over the three basic corruptions, and the full MRI suite (max_ops 3) as a 'chain'
(random order) and as 'ordered' (the same draw in acquisition order, the default
config's recipe), on device-resident synthetic batches; prints images/s (median of
repeats) and the step-time overhead against 'none' measured in the same run.
--only=tiny skips the VGG16 setting. No TensorFlow needed.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from brainjax import degrade, models, steps  # noqa: E402
from brainjax import state as state_lib  # noqa: E402
from configs import default  # noqa: E402

BASIC = {"gaussian_noise": (0.02, 0.2), "gaussian_blur": (0.5, 5.0), "downsample": (0.3, 0.8)}
FULL = {name: (levels[0], levels[-1]) for name, levels in degrade.SEVERITIES.items()}


def settings():
    tiny = default.get_config()
    vgg = default.get_config()
    vgg.model.backbone, vgg.image_size, vgg.batch_size, vgg.trainable = "vgg16", 112, 32, ("^head/",)
    vgg.model.head_hidden, vgg.model.dropout = (1024, 512), 0.5
    return {"default (tiny, 64px, batch 64, trains all)": tiny, "vgg16 frozen, 112px, batch 32": vgg}


def time_step(config, degrade_cfg, num_steps, repeats):
    model = models.create_model(config.model, 4)
    state, tx, labels = state_lib.create_train_state(config, model, 4, jax.random.key(0), 10)
    step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, label_tree=labels,
                                     degrade_cfg=degrade_cfg), donate_argnums=0)
    n, s = config.batch_size, config.image_size
    rng = np.random.default_rng(0)
    batch = jax.device_put({"image": rng.integers(0, 256, (n, s, s, 1), dtype=np.uint8),
                            "label": rng.integers(0, 4, (n,)).astype(np.int32)})
    state, m = step(jax.device_put(state), batch, jax.random.key(0))
    jax.block_until_ready(m)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(num_steps):
            state, m = step(state, batch, jax.random.key(0))
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return n * num_steps / float(np.median(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default="degrade_overhead.json")
    ap.add_argument("--only", default="", help="run only the settings whose label contains this")
    args = ap.parse_args()
    results = {}
    recipes = [("none", {"recipe": "none"}),
               ("chain_basic", {"recipe": "chain", "prob": 1.0, **BASIC}),
               ("chain_full_suite", {"recipe": "chain", "prob": 1.0, "max_ops": 3, **FULL}),
               ("ordered_full_suite", {"recipe": "ordered", "prob": 1.0, "max_ops": 3, **FULL})]
    for label, config in settings().items():
        if args.only not in label:
            continue
        row = {name: time_step(config, cfg, args.steps, args.repeats) for name, cfg in recipes}
        for name, _ in recipes[1:]:
            row["overhead_" + name] = row["none"] / row[name] - 1
        results[label] = row
        print(f"{label}: none {row['none']:.1f} img/s | " + " | ".join(
            f"{name} {row[name]:.1f} img/s (+{100 * row['overhead_' + name]:.1f}% step time)" for name, _ in recipes[1:]),
            flush=True)
    with open(args.out, "w") as f:
        json.dump({"device": str(jax.devices()[0]), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
