"""How long one save blocks the training thread, by what is handed to orbax: host copy
(parallel.unreplicate) vs device arrays (parallel.checkpoint_copy), pmap and jit; the
default config's TrainState on 4 CPU devices (BUILD_NOTES, session 9). Also the process CPU
time (all threads: the host copy, orbax's Python and its tensorstore writes) from the
handover until the files are written: what a save costs the machine however well it is
hidden from the training thread (on a 2-core CPU it competes with training; BUILD_NOTES,
session 12)."""
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
print("leaves", len(jax.tree.leaves(state)), "params", sum(x.size for x in jax.tree.leaves(state.params)))
for mode in ("pmap", "jit"):
    with parallel.using(mode):
        rstate = parallel.replicate(state)
        for name, fn in (("host", parallel.unreplicate), ("device", parallel.checkpoint_copy)):
            d = tempfile.mkdtemp()
            ck = checkpoint.Checkpoints(d)
            blocking, total, cpu = [], [], []
            for step in range(1, 8):
                c0 = time.process_time()
                t0 = time.perf_counter()
                s = fn(rstate)
                best = {"params": s.params, "batch_stats": s.batch_stats}
                ck.save(step, s, best, {"epoch": 0})
                t1 = time.perf_counter()
                ck.wait()
                t2 = time.perf_counter()
                blocking.append(t1 - t0); total.append(t2 - t0); cpu.append(time.process_time() - c0)
            ck.close()
            print(mode, name, "blocking ms", np.round(1000 * np.median(blocking[2:]), 1), "until written ms", np.round(1000 * np.median(total[2:]), 1),
                  "CPU ms", np.round(1000 * np.median(cpu[2:]), 1), flush=True)
one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
with parallel.using("pmap"):
    rstate = parallel.replicate(state)
    variants = {
        "single_device": lambda r: jax.device_put(parallel.checkpoint_copy(r), one),
        "device_get_of_copy": lambda r: jax.device_get(parallel.checkpoint_copy(r)),
        "copy_only": parallel.checkpoint_copy,
    }
    for name, fn in variants.items():
        d = tempfile.mkdtemp(); ck = checkpoint.Checkpoints(d); blocking = []
        for step in range(1, 8):
            t0 = time.perf_counter(); s = fn(rstate)
            if name == "copy_only":
                jax.block_until_ready(s); blocking.append(time.perf_counter() - t0); continue
            ck.save(step, s, {"params": s.params, "batch_stats": s.batch_stats}, {"epoch": 0})
            blocking.append(time.perf_counter() - t0); ck.wait()
        ck.close()
        print(name, "blocking ms", np.round(1000 * np.median(blocking[2:]), 1), flush=True)
