"""The one place that knows the device layout, `jax.pmap` / `jax.shard_map` and processes.

Step functions in `brainjax.steps` (and the evaluators) are plain functions of
(state, batch, *broadcast) with an `axis_name` for their collectives (gradient and
BatchNorm pmean, metric psum); this module binds the axis and compiles them in one of
two modes (`config.parallel`, set for the duration of a run with `using`):

  pmap  `jax.pmap` over the local devices: state replicated with a leading local-device
        axis; batches [local_devices, per_device, ...]. Across processes
        (`jax.distributed`) pmap's collectives span every device of every process.
  jit   `jax.jit` of `jax.shard_map` over a 1-D mesh of every device of every process:
        state is one global array per leaf, replicated (no device axis); batches are
        global arrays [global_batch, ...] sharded over the mesh, built from each
        process's rows with `jax.make_array_from_process_local_data`. The step function
        runs per device exactly as under pmap (same per-device batch, same collectives),
        so both modes train the same model; the jit path is the current JAX idiom and
        needs no host-local/global conversion on every call.

Callers never see the difference: the pipeline hands every mode the same host batches
[local_devices, per_device, ...]; `shard` lays them out, `replicate` / `unreplicate`
move state, `host_local` / `first_device` read a step's per-device outputs, and
`checkpoint_copy` makes the device-side copy a save starts from (optionally transformed
on device, e.g. into the flat checkpoint format) and `checkpoint_state` a copy of the
model kept as the best one (`config.checkpoint_from`: device-side, or a host copy,
`unreplicate`).
Host-side agreement between processes (barriers, gathering evaluation outputs) goes
through `multihost_utils` here too.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import itertools
import os
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "batch"
MODES = ("pmap", "jit")
T = TypeVar("T")
_mode = "pmap"


def set_mode(mode: str) -> None:
    """Selects how steps are compiled and state is laid out (`config.parallel`)."""
    global _mode
    if mode not in MODES:
        from brainjax.errors import UserError

        raise UserError(f"config.parallel={mode!r}: must be one of {', '.join(MODES)}")
    _mode = mode


def mode() -> str:
    return _mode


@contextlib.contextmanager
def using(new_mode: str) -> Iterator[None]:
    """`set_mode(new_mode)` for the duration of a block (tests, benchmarks)."""
    old = _mode
    set_mode(new_mode)
    try:
        yield
    finally:
        set_mode(old)


@functools.lru_cache(maxsize=None)
def _mesh(devices: tuple) -> Mesh:
    return Mesh(np.asarray(devices), (AXIS,))


def global_mesh() -> Mesh:
    """1-D mesh over every device of every process (process-major, as jax.devices())."""
    return _mesh(tuple(jax.devices()))


def replicated_sharding() -> NamedSharding:
    """Every device of every process holds the whole array (state, checkpoints)."""
    return NamedSharding(global_mesh(), PartitionSpec())


def batch_sharding() -> NamedSharding:
    """Leading axis split over every device of every process (global batches)."""
    return NamedSharding(global_mesh(), PartitionSpec(AXIS))


def _local_sharding() -> NamedSharding:
    return NamedSharding(_mesh(tuple(jax.local_devices())), PartitionSpec(AXIS))


def _host(x: Any) -> np.ndarray:
    """Host copy of an array that every process can read whole (numpy, or a device array
    that is fully addressable or fully replicated)."""
    return np.asarray(jax.device_get(x))


def _global_replicated(x: Any) -> jax.Array:
    if isinstance(x, jax.Array) and x.sharding == replicated_sharding():
        return x
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_global_replicated(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    host = _host(x)
    return jax.make_array_from_callback(host.shape, replicated_sharding(), lambda index: host[index])


def replicate(tree: Any) -> Any:
    """State or variables (host or device arrays) laid out for the steps: pmap, copied
    onto every local device (leading device axis); jit, one global replicated array."""
    if _mode == "jit":
        return jax.tree.map(_global_replicated, tree)
    n = jax.local_device_count()
    sharding = _local_sharding()

    def put(x):
        x = _host(x)
        return jax.device_put(np.broadcast_to(x, (n, *x.shape)), sharding)

    return jax.tree.map(put, tree)


def unreplicate(tree: Any) -> Any:
    """Host numpy copy of replicated state or variables (one replica)."""
    def first(x):
        if not isinstance(x, jax.Array):
            return np.asarray(x)
        data = np.asarray(x.addressable_shards[0].data)
        return np.array(data[0] if _mode == "pmap" else data)

    return jax.tree.map(first, tree)


def replica_shapes(tree: Any) -> Any:
    """Shapes and dtypes of one replica of replicated state (for jax.eval_shape)."""
    drop = 1 if _mode == "pmap" else 0
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[drop:], x.dtype), tree)


def first_device(tree: Any) -> Any:
    """Host numpy copy of the first device's part of a step's outputs (outputs reduced
    over the axis, such as psum'd metrics or moments, are the same on every device)."""
    return jax.tree.map(lambda x: np.array(np.asarray(x.addressable_shards[0].data)[0]), tree)


def host_local(x: jax.Array) -> np.ndarray:
    """This process's part of a per-device step output, [local_devices, ...] in local
    device order (the order `shard` gave the batch rows)."""
    if _mode == "pmap":
        return np.asarray(x)
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])


def device_rows(tree: Any, num_devices: int | None = None) -> Any:
    """Host batch arrays [n, ...] in the layout every mode's `shard` takes:
    [local_devices, n / local_devices, ...] (row i goes to local device i // per_device)."""
    d = num_devices or jax.local_device_count()
    return jax.tree.map(lambda x: np.asarray(x).reshape(d, -1, *np.shape(x)[1:]), tree)


def flat_rows(x: np.ndarray) -> np.ndarray:
    """The inverse of `device_rows`: [local_devices, per_device, ...] -> [n, ...]."""
    return np.asarray(x).reshape(-1, *np.shape(x)[2:])


def shard(batch: Any) -> Any:
    """Puts a host batch laid out [local_devices, per_device, ...] onto the devices: pmap,
    as is over the local devices; jit, as this process's rows of a global batch."""
    if _mode == "jit":
        sharding = batch_sharding()
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, flat_rows(x)), batch)
    sharding = _local_sharding()
    return jax.tree.map(lambda x: jax.device_put(x, sharding), batch)


CHECKPOINT_FROM = ("auto", "device", "host")


def checkpoint_source(choice: str = "auto") -> str:
    """'device' or 'host' for config.checkpoint_from: 'auto' is 'host' on the CPU backend
    (measured CPU per save of the default state, flat format, 4 CPU devices: host 28-33
    ms, device 35 ms; benchmarks/checkpoint_handover.py) and 'device' on
    accelerators, where orbax overlaps the transfers with the writes."""
    if choice not in CHECKPOINT_FROM:
        from brainjax.errors import UserError

        raise UserError(f"config.checkpoint_from={choice!r}: must be one of {', '.join(CHECKPOINT_FROM)}")
    if choice == "auto":
        return "host" if jax.default_backend() == "cpu" else "device"
    return choice


def checkpoint_state(tree: Any, source: str) -> Any:
    """What a save hands orbax for replicated state: `checkpoint_copy` (device arrays)
    for source 'device', `unreplicate` (host numpy) for 'host'."""
    return checkpoint_copy(tree) if source == "device" else unreplicate(tree)


def checkpoint_copy(tree: Any, transform: Callable[[Any], Any] | None = None) -> Any:
    """A device-side copy of replicated state, or of `transform` of one replica (a pure
    jittable function; `flat_tree.concat_leaves` gives the flat format's 1-3 arrays),
    computed in one dispatch, as global arrays replicated over every device of every
    process: orbax saves them directly (its own device-to-host transfer, no host copy
    here), and later steps cannot donate them away (every output is a fresh buffer)."""
    out = _replica_copy_jit(transform, _mode, tuple(jax.local_devices()))(tree)
    if _mode == "jit":
        return out
    return jax.tree.map(_as_global_replicated, out)


@functools.lru_cache(maxsize=None)
def _replica_copy_jit(transform: Callable | None, mode: str, local_devices: tuple) -> Callable:
    """jit mode: the state is already one replicated global array per leaf. pmap mode: the
    state is [local_devices, ...] over this process's devices, one identical row per
    device: each device transforms its own row (no collective), and the result is
    replicated over the local devices."""
    def copy(tree):
        return jax.tree.map(jnp.copy, tree if transform is None else transform(tree))  # never the input buffers

    if mode == "jit":
        return jax.jit(copy, out_shardings=replicated_sharding())
    own_row = jax.shard_map(lambda t: copy(jax.tree.map(lambda x: x[0], t)), mesh=_mesh(local_devices),
                            in_specs=PartitionSpec(AXIS), out_specs=PartitionSpec(), check_vma=False)
    return jax.jit(own_row)


def _as_global_replicated(x: jax.Array) -> jax.Array:
    """An array replicated over this process's devices as one replicated over every device
    of every process (the same buffers; every process holds the same values)."""
    if x.sharding == replicated_sharding():  # one process: the local mesh is the global one
        return x
    return jax.make_array_from_single_device_arrays(x.shape, replicated_sharding(),
                                                    [s.data for s in x.addressable_shards])


def prefetch_to_device(batches: Iterable[Any], size: int = 2) -> Iterator[Any]:
    """Yields `shard(batch)` with `size` batches already transferred ahead of the step
    that consumes them, so host-to-device copies overlap the computation."""
    queue: collections.deque = collections.deque()
    it = iter(batches)

    def enqueue(n: int) -> None:
        for batch in itertools.islice(it, n):
            queue.append(shard(batch))

    enqueue(size)
    while queue:
        batch = queue.popleft()
        enqueue(1)  # keep `size` batches in flight beyond the one handed out
        yield batch


def compiled_step(step_fn: Callable, *, num_broadcast: int = 1, donate_state: bool = False) -> Callable:
    """Compiles `step_fn(state, batch, *broadcast, axis_name)` for the current mode, with
    collectives on AXIS. State is replicated, the batch split over devices, the
    `num_broadcast` trailing arguments (rng, severity level, ...) the same everywhere.
    With `donate_state`, `step_fn` returns (new state, outputs) and the old state's
    buffers are reused for the new one; otherwise it returns outputs. Outputs are
    per device (read them with `host_local` / `first_device`)."""
    fn = functools.partial(step_fn, axis_name=AXIS)
    if _mode == "pmap":
        return jax.pmap(fn, axis_name=AXIS, in_axes=(0, 0) + (None,) * num_broadcast,
                        donate_argnums=(0,) if donate_state else ())
    return _shard_mapped(fn, num_broadcast, donate_state)


def _shard_mapped(fn: Callable, num_broadcast: int, donate_state: bool) -> Callable:
    spec, rows = PartitionSpec(), PartitionSpec(AXIS)

    def per_device(state, batch, *broadcast):
        out = fn(state, batch, *broadcast)
        with_axis = functools.partial(jax.tree.map, lambda y: jnp.asarray(y)[None])  # pmap's device axis
        return (out[0], with_axis(out[1])) if donate_state else with_axis(out)

    mapped = jax.shard_map(per_device, mesh=global_mesh(), in_specs=(spec, rows) + (spec,) * num_broadcast,
                           out_specs=(spec, rows) if donate_state else rows, check_vma=False)
    jitted = jax.jit(mapped, donate_argnums=(0,) if donate_state else ())

    def call(state, batch, *broadcast):
        if jax.process_count() > 1:  # host-local broadcast values as global replicated arrays
            broadcast = jax.tree.map(_global_replicated, broadcast)
        return jitted(state, batch, *broadcast)

    return call


# ---------------------------------------------------------------------------------------
# Processes.


def is_main_process() -> bool:
    """Process 0 writes reports, plots and metrics; every process trains and evaluates."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier across processes (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def process_zero_first(name: str, fn: Callable[[], T]) -> T:
    """Runs `fn` on process 0, then (after a barrier) on the others: for work that must
    happen once per shared directory (dataset builds, weight downloads) and that the
    other processes redo cheaply, or for real where their directory is host-local."""
    if jax.process_count() == 1:
        return fn()
    result = fn() if is_main_process() else None
    sync(f"{name}:process0_done")
    if not is_main_process():
        result = fn()
    sync(f"{name}:all_done")
    return result  # type: ignore[return-value]


def gather_from_processes(tree: Any) -> Any:
    """Host numpy pytree with a leading process axis [P, ...] (equal shapes required);
    [1, ...] with one process."""
    if jax.process_count() == 1:
        return jax.tree.map(lambda x: np.asarray(x)[None], tree)
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=False))


def all_process_values(value: int) -> list[int]:
    """Every process's integer `value`, indexed by process (a host-level all-gather), so
    all processes can take the same decision from what each one saw."""
    if jax.process_count() == 1:
        return [int(value)]
    return [int(v) for v in np.asarray(multihost_utils.process_allgather(np.asarray(value, np.int32))).ravel()]


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any (a host-level all-gather)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def preemption_sync_point(step: int) -> bool:
    """With several processes: True on every process at the same step once any of them
    got SIGTERM (JAX's preemption sync manager, set up by jax.distributed.initialize)."""
    global _preemption_sync_available
    if jax.process_count() == 1 or not _preemption_sync_available:
        return False
    try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
    except RuntimeError:  # no preemption sync manager in this jax.distributed setup
        _preemption_sync_available = False
        return False


_preemption_sync_available = True


# ---------------------------------------------------------------------------------------
# Failure across processes. Without this, one process's exception or death leaves the
# others blocked in a collective until JAX's heartbeat timeout aborts them with a C++
# stack trace that never says what went wrong. Every process runs a watcher thread that,
# once a second, (1) posts a liveness counter and (2) reads the others' counters and any
# failure notice from the coordination service's key-value store (one RPC each). A
# failing process posts its error (`report_failure`); a process whose counter stops
# moving for `stale_s` (kill -9, a crash, a hang) is declared lost. Either way every
# other process prints one line naming the process and the cause and exits with code 1,
# even while its main thread is blocked in a collective.

KV_PREFIX = "brainjax/"
FAILURE_KEY = KV_PREFIX + "failed"
ALIVE_PREFIX = KV_PREFIX + "alive/"
DONE_PREFIX = KV_PREFIX + "done/"
ACK_PREFIX = KV_PREFIX + "ack/"
ACK_GRACE_S = 1.0  # report_failure: how long the failed process outlives the acknowledgements
_watch_stop = threading.Event()


def _coordination_client() -> Any:
    # JAX has no public handle on its coordination service's key-value store;
    # multihost_utils reaches it the same way.
    from jax._src import distributed

    return distributed.global_state.client


_stop_lock = threading.Lock()


def _stop_process(line: str, before_exit: Callable[[], None] | None = None) -> None:
    """Prints the one error line, runs `before_exit` (if any), and exits this process.
    The first caller wins (the watcher thread or an error on the main thread): a second
    one waits on the lock until the process is gone, so only one line is printed."""
    _stop_lock.acquire()
    print(f"brainjax: error: {line}", file=sys.stderr, flush=True)
    if before_exit is not None:
        before_exit()
    os._exit(1)


def posted_failure(client: Any, entries: dict, me: int) -> bool:
    """Acts on a failure another process posted: one line naming it, an acknowledgement,
    exit. True when the failure is this process's own (the watcher then ends)."""
    notice = entries.get(FAILURE_KEY)
    if notice is None:
        return False
    failed, _, message = notice.partition("\t")
    if int(failed) == me:
        return True
    # The line first, then the acknowledgement, then exit: once acknowledged, the failed
    # process may exit, and if it is process 0 its coordination service goes with it
    # (JAX's client then aborts this process, exit -6, seen once in a suite run).
    def acknowledge() -> None:
        try:
            client.key_value_set(f"{ACK_PREFIX}{me}", "1", allow_overwrite=True)
        except Exception:  # noqa: BLE001  (the failed process may be gone already)
            pass

    _stop_process(f"process {failed} failed: {message}; process {me} stops too", before_exit=acknowledge)
    return False


def check_liveness(entries: dict, me: int, moved: dict, now: float, stale_s: float) -> None:
    """Stops this process with one line when another's liveness counter has stood still
    for `stale_s` (a process that posted done/<i> finished, it did not die). `moved`:
    {process: (last counter, since when)}, updated."""
    for key, value in entries.items():
        if not key.startswith(ALIVE_PREFIX):
            continue
        other = int(key[len(ALIVE_PREFIX):])
        if other == me or f"{DONE_PREFIX}{other}" in entries:
            continue
        last_value, since = moved.get(other, (None, now))
        if value != last_value:
            moved[other] = (value, now)
        elif now - since > stale_s and not _watch_stop.is_set():
            _stop_process(f"process {other} was lost: no sign of life for {now - since:.0f} s (killed, "
                          f"crashed or hung); process {me} stops too")


def watch_for_peer_failure(stale_s: float = 50.0, period_s: float = 1.0) -> None:
    """With several processes: starts the watcher thread described above (no-op with
    one process). `stale_s`: how long another process's liveness counter may stand
    still before it is declared lost (keep it well above any pause of a healthy
    process; JAX's own heartbeat timeout is the backstop). A process that exits
    normally posts `done/<i>` first, so finishing early is not dying."""
    if jax.process_count() == 1:
        return
    client, me = _coordination_client(), jax.process_index()

    def watch() -> None:
        beat, moved, coordinator_lost_at = 0, {}, None
        while not _watch_stop.wait(period_s):
            beat += 1
            now = time.monotonic()
            try:
                client.key_value_set(f"{ALIVE_PREFIX}{me}", str(beat), allow_overwrite=True)
                entries = dict(client.key_value_dir_get(KV_PREFIX))
            except Exception as err:  # noqa: BLE001  (the coordination service, process 0's, is unreachable)
                coordinator_lost_at = coordinator_lost_at or now
                if now - coordinator_lost_at > stale_s and not _watch_stop.is_set():
                    _stop_process(f"process 0 (the coordinator) was lost: unreachable for {stale_s:.0f} s "
                                  f"({type(err).__name__}); process {me} stops too")
                continue
            coordinator_lost_at = None
            if posted_failure(client, entries, me):
                return
            check_liveness(entries, me, moved, now, stale_s)

    thread = threading.Thread(target=watch, name="brainjax-peer-failure", daemon=True)
    thread.start()

    def finish() -> None:  # before jax.distributed's own atexit shutdown (last registered runs first)
        try:
            client.key_value_set(f"{DONE_PREFIX}{me}", "1", allow_overwrite=True)
        except Exception:  # noqa: BLE001
            pass
        _watch_stop.set()
        thread.join(timeout=5)

    atexit.register(finish)


def report_failure(message: str, wait_s: float = 10.0) -> bool:
    """Posts this process's failure for the other processes' watchers, then waits up to
    `wait_s` for each to acknowledge (process 0 hosts the coordination service and must
    outlive their reading it). False if another process reported first or the service
    is gone. No-op (False) with one process."""
    if jax.process_count() == 1:
        return False
    client, me = _coordination_client(), jax.process_index()
    try:
        client.key_value_set(FAILURE_KEY, f"{me}\t{message}")
    except Exception:  # noqa: BLE001  (ALREADY_EXISTS: another process failed first)
        return False
    deadline = time.monotonic() + wait_s
    for other in range(jax.process_count()):
        if other == me:
            continue
        try:
            client.blocking_key_value_get(f"{ACK_PREFIX}{other}", max(int((deadline - time.monotonic()) * 1000), 1))
        except Exception:  # noqa: BLE001  (that process is gone or did not answer in time)
            pass
    # An acknowledging process exits right after its acknowledgement; outlive that exit, so
    # no process sees the coordination service go first.
    time.sleep(ACK_GRACE_S)
    return True


_COMMUNICATION_MARKERS = ("gloo", "connection", "peer", "heartbeat", "unavailable", "socket", "nccl",
                          "coordination service", "barrier")


def is_communication_failure(err: BaseException) -> bool:
    """True for a runtime error from a collective or barrier that lost its peers (a
    process was killed or crashed), as opposed to an error of this process's own."""
    name = type(err).__name__
    text = str(err).lower()
    return name in ("XlaRuntimeError", "JaxRuntimeError") and any(m in text for m in _COMMUNICATION_MARKERS)
