"""The training step alone, pmap vs jit (config.parallel), frozen VGG16 at 112 px, batch 32 over
4 CPU devices, as `loop_rates` trains it: a pre-placed batch, and `parallel.shard` of the
host batch every step; 6 interleaved rounds of 5 steps per variant, median img/s
(whether the loop's jit/pmap gap is in the step)."""
import os, sys, time, functools
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from brainjax import xla_flags; xla_flags.apply_cpu_defaults()
import jax, numpy as np
from brainjax import benchmark, models, parallel, steps, degrade
from brainjax import state as state_lib
c = benchmark.benchmark_config("vgg16", 112, 32); c.trainable = ("^head/",)
model = models.create_model(c.model, 4, bn_axis_name=parallel.AXIS, frozen_base=True)
state, tx, labels = state_lib.create_train_state(c, model, 4, jax.random.key(0), 10)
state = jax.device_get(state)
step = functools.partial(steps.train_step, model=model, tx=tx, label_tree=labels, degrade_cfg=degrade.SEED_CHAIN_CFG)
rng = np.random.default_rng(0)
host = parallel.device_rows({"image": rng.integers(0, 256, (32, 112, 112, 1), dtype=np.uint8),
                             "label": rng.integers(0, 4, (32,)).astype(np.int32)}, 4)
runs = {}
for mode in ("pmap", "jit"):
    with parallel.using(mode):
        fn = parallel.compiled_step(step, donate_state=True)
        r = parallel.replicate(state); b = parallel.shard(host)
        r, m = fn(r, b, jax.random.key(1)); jax.block_until_ready(m)
        runs[mode] = [fn, r, b]
res = {k: [] for k in ("pmap", "jit", "pmap+shard", "jit+shard")}
for rep in range(6):
    for mode in ("pmap", "jit"):
        with parallel.using(mode):
            fn, r, b = runs[mode]
            for with_shard in (False, True):
                t0 = time.perf_counter()
                for i in range(5):
                    bb = parallel.shard(host) if with_shard else b
                    r, m = fn(r, bb, jax.random.key(i))
                jax.block_until_ready(m); jax.block_until_ready(r)
                res[mode + ("+shard" if with_shard else "")].append(5 * 32 / (time.perf_counter() - t0))
            runs[mode][1] = r
for k, v in res.items():
    print(k, "img/s median", round(float(np.median(v)), 2), np.round(v, 1))
