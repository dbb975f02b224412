"""Where the loop's jit/pmap gap is: the frozen VGG16 step of `loop_rates` (112 px, batch
32, 4 CPU devices, seed-chain degradation) fed five ways per parallel mode, built up
towards the loop (BUILD_NOTES):
  placed   a batch already on the devices (the step alone, as benchmarks/step_modes.py)
  shard    `parallel.shard` of an in-memory host batch every step
  prefetch `parallel.prefetch_to_device` over in-memory host batches
  tfdata   `parallel.prefetch_to_device` over the real training source (tf.data)
  loop     tfdata + the loop's own metric windows (`loop.MetricWindows`: async copy to
           host when a window closes, read one window later)
Rounds interleave every (mode, variant) with `--steps` steps each, so this machine's
drift falls on all alike; prints the median img/s per cell and jit / pmap per variant."""
import argparse, itertools, os, sys, tempfile, time
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from brainjax import xla_flags; xla_flags.apply_cpu_defaults()
import functools
import jax, numpy as np
from brainjax import benchmark, degrade, loop, models, parallel, steps, train
from brainjax import state as state_lib

p = argparse.ArgumentParser()
p.add_argument("--rounds", type=int, default=6)
p.add_argument("--steps", type=int, default=4)
p.add_argument("--log_every", type=int, default=5)
p.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "brainjax_loop_pieces_tfds"))
args = p.parse_args()

c = benchmark.benchmark_config("vgg16", 112, 32)
c.dataset, c.data_dir = "brain_phantom/small", args.data_dir
c.trainable, c.train_degrade = ("^head/",), degrade.SEED_CHAIN_CFG
pipeline = train.input_pipeline(c)
source = train.ImageBatches(pipeline, c.train_split, c.seed)
n = pipeline.num_classes
model = models.create_model(c.model, n, bn_axis_name=parallel.AXIS, frozen_base=True)
host_state, tx, labels = state_lib.create_train_state(c, model, n, jax.random.key(0), source.steps_per_epoch)
step = functools.partial(steps.train_step, model=model, tx=tx, label_tree=labels, degrade_cfg=c.train_degrade.to_dict())
host_batches = list(itertools.islice(source.epoch(0), 4))
rng = jax.random.key(1)


def endless(make):
    for e in itertools.count():
        yield from make(e)


runs = {}
for mode in parallel.MODES:
    with parallel.using(mode):
        fn = parallel.compiled_step(step, donate_state=True)
        r = parallel.replicate(host_state)
        placed = parallel.shard(host_batches[0])
        r, m = fn(r, placed, rng)
        jax.block_until_ready(m)
        runs[mode] = dict(fn=fn, r=r, placed=placed, i=0,
                          prefetch=parallel.prefetch_to_device(endless(lambda e: host_batches), 2),
                          tfdata=parallel.prefetch_to_device(endless(source.epoch), 2),
                          loop=parallel.prefetch_to_device(endless(source.epoch), 2),
                          windows=loop.MetricWindows())
VARIANTS = ("placed", "shard", "prefetch", "tfdata", "loop")


def run_cell(mode: str, variant: str) -> float:
    s = runs[mode]
    fn, r = s["fn"], s["r"]
    t0 = time.perf_counter()
    for _ in range(args.steps):
        if variant == "placed":
            b = s["placed"]
        elif variant == "shard":
            b = parallel.shard(host_batches[s["i"] % len(host_batches)])
        else:
            b = next(s[variant])
        r, m = fn(r, b, jax.random.fold_in(rng, s["i"]))
        s["i"] += 1
        if variant == "loop":  # the loop's metric windows, as loop.fit keeps them
            s["windows"].add(s["i"], m, close=s["i"] % args.log_every == 0)
            s["windows"].ready()
    jax.block_until_ready(r)
    s["r"] = r
    return args.steps * c.batch_size / (time.perf_counter() - t0)


res = {(m, v): [] for m in parallel.MODES for v in VARIANTS}
for rnd in range(args.rounds):
    order = list(parallel.MODES) if rnd % 2 == 0 else list(reversed(parallel.MODES))
    for variant in VARIANTS:
        for mode in order:
            with parallel.using(mode):
                res[mode, variant].append(run_cell(mode, variant))
    print(f"round {rnd + 1}: " + "  ".join(f"{m}/{v} {res[m, v][-1]:.1f}" for v in VARIANTS for m in parallel.MODES),
          flush=True)
print(f"{'variant':<10}{'pmap img/s':>12}{'jit img/s':>12}{'jit/pmap (median of rounds)':>30}")
for v in VARIANTS:
    a, b = np.array(res["pmap", v]), np.array(res["jit", v])
    print(f"{v:<10}{np.median(a):>12.2f}{np.median(b):>12.2f}{np.median(b / a):>30.3f}")
