"""What a save costs per array, not per byte: the engine's save (`checkpoint.Checkpoints`,
on the calling thread) of the default config's state + best (171 arrays, host numpy) vs
the same floats as two flat arrays,
process CPU time (all threads) from the save call until the files are written, median of
6 saves (BUILD_NOTES, session 12: the lever for issue 23's checkpoint overhead)."""
import os, sys, time, tempfile
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from brainjax import xla_flags; xla_flags.apply_cpu_defaults()
import jax, numpy as np
from jax.flatten_util import ravel_pytree
from brainjax import checkpoint, models
from brainjax import state as state_lib
from configs import default
c = default.get_config()
model = models.create_model(c.model, 4)
state, _, _ = state_lib.create_train_state(c, model, 4, jax.random.key(0), 10)
s = jax.device_get(state); best = {"params": s.params, "batch_stats": s.batch_stats}
flat_s, _ = ravel_pytree(jax.tree.map(np.asarray, s)); flat_b, _ = ravel_pytree(best)
flat = {"state": np.asarray(flat_s), "best": np.asarray(flat_b)}
print("leaves", len(jax.tree.leaves(s)) + len(jax.tree.leaves(best)), "floats", flat["state"].size + flat["best"].size)
for name, (st, be) in {"tree": (s, best), "flat": (flat["state"], flat["best"])}.items():
    ck, cpu = checkpoint.Checkpoints(tempfile.mkdtemp(), background=False), []
    for step in range(1, 9):
        c0 = time.process_time()
        ck.save(step, st, be, {"epoch": 0}); ck.wait(); cpu.append(time.process_time() - c0)
    print(name, "CPU ms per save", np.round(1000 * np.median(cpu[2:]), 1), np.round(1000 * np.array(cpu[2:]), 0))
    ck.close()
