"""What a save costs per array, not per byte: the engine's save (`checkpoint.Checkpoints`,
on the calling thread) of the default config's state + best (171 arrays) in the earlier
tree format (`flat=False`, one orbax array per leaf) vs the flat format (one array per
dtype, the default since session 13), from host numpy and from device arrays.
Process CPU time (all threads) from the save call until the files are written, median of
6 saves after 2 warm-up saves, every variant in the same run (BUILD_NOTES, sessions
12-13: issue 23's checkpoint overhead). Also checks that each variant restores to the
saved values."""
import os, sys, time, tempfile
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from brainjax import xla_flags; xla_flags.apply_cpu_defaults()
import jax, numpy as np
from brainjax import checkpoint, models
from brainjax import state as state_lib
from configs import default
c = default.get_config()
model = models.create_model(c.model, 4)
state, _, _ = state_lib.create_train_state(c, model, 4, jax.random.key(0), 10)
on_device = jax.tree.map(jax.numpy.array, state)
host = jax.device_get(state)
print("leaves", len(jax.tree.leaves(host)) + len(jax.tree.leaves(host.params)) + len(jax.tree.leaves(host.batch_stats)),
      "values", sum(np.size(x) for x in jax.tree.leaves(host)) + sum(np.size(x) for x in jax.tree.leaves(
          {"p": host.params, "b": host.batch_stats})))
median = {}
for name, flat, st in [("tree host", False, host), ("flat host", True, host),
                       ("tree device", False, on_device), ("flat device", True, on_device)]:
    be = {"params": st.params, "batch_stats": st.batch_stats}
    ck, cpu = checkpoint.Checkpoints(tempfile.mkdtemp(), background=False, flat=flat), []
    for step in range(1, 9):
        c0 = time.process_time()
        ck.save(step, st, be, {"epoch": 0}); ck.wait(); cpu.append(time.process_time() - c0)
    restored, _, _ = ck.restore(host, {"params": host.params, "batch_stats": host.batch_stats})
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(restored)))
    median[name] = 1000 * np.median(cpu[2:])
    print(f"{name:12s} CPU ms per save {median[name]:6.1f}  {np.round(1000 * np.array(cpu[2:]), 0)}")
    ck.close()
for src in ("host", "device"):
    print(f"from {src}: flat / tree = {median['flat ' + src] / median['tree ' + src]:.3f}")
