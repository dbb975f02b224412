"""What one save costs, the way `loop.fit` makes it: the training thread hands a
device-side snapshot (`Checkpoints.snapshot`) to the background worker, which makes the
host copy when config.checkpoint_from='host' (the CPU default) and calls orbax. For pmap
and jit, host and device sources, all in one run on the default config's TrainState and
4 CPU devices:
  blocking ms  how long `save` holds the training thread (the handover)
  CPU ms       process CPU (all threads: copies, orbax's Python, tensorstore's writes)
               from the handover until the files are written; what a save costs a
               2-core machine however well it is hidden
Medians of 6 saves after 2 warm-up saves."""
import os, sys, time
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from brainjax import xla_flags; xla_flags.apply_cpu_defaults()
import jax, numpy as np, tempfile
from brainjax import models, parallel, checkpoint
from brainjax import state as state_lib
from configs import default
c = default.get_config()
model = models.create_model(c.model, 4)
state, _, _ = state_lib.create_train_state(c, model, 4, jax.random.key(0), 10)
print("state leaves", len(jax.tree.leaves(state)), "params", sum(x.size for x in jax.tree.leaves(state.params)))
cpu_of = {}
for mode in ("pmap", "jit"):
    with parallel.using(mode):
        rstate = parallel.replicate(state)
        for source in ("host", "device"):
            best_state = parallel.checkpoint_state(rstate, source)  # as the loop keeps `best`
            best = {"params": best_state.params, "batch_stats": best_state.batch_stats}
            ck = checkpoint.Checkpoints(tempfile.mkdtemp(), background=True)
            blocking, cpu = [], []
            for step in range(1, 9):
                c0, t0 = time.process_time(), time.perf_counter()
                ck.save(step, ck.snapshot(rstate), best, {"epoch": 0}, host_copy=source == "host")
                blocking.append(time.perf_counter() - t0)
                ck.wait()
                cpu.append(time.process_time() - c0)
            ck.close()
            cpu_of[mode, source] = 1000 * np.median(cpu[2:])
            print(f"{mode:4s} {source:6s}  blocking ms {1000 * np.median(blocking[2:]):6.1f}  "
                  f"CPU ms {cpu_of[mode, source]:6.1f}", flush=True)
