"""The one place that knows about `jax.pmap`, device layout and processes.

Step functions in `brainjax.steps` are plain functions of (state, batch, rng) that take
an optional `axis_name`; this module binds the axis and wraps them. `jax.pmap` is in
maintenance mode upstream: moving to `jax.jit` + `jax.shard_map` touches only this file.

Layout: state is replicated on every local device (leading axis = local devices, a
NamedSharding over a 1-D 'batch' mesh); batches arrive from the pipeline already shaped
[local_devices, per_device_batch, ...]. Across processes (`jax.distributed`), pmap's
collectives span all devices of all processes; host-side agreement between processes
(barriers, gathering evaluation outputs) goes through `multihost_utils` here too.
"""

from __future__ import annotations

import atexit
import collections
import functools
import itertools
import os
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "batch"
T = TypeVar("T")


def _local_sharding() -> NamedSharding:
    return NamedSharding(Mesh(np.asarray(jax.local_devices()), (AXIS,)), PartitionSpec(AXIS))


def replicate(tree: Any) -> Any:
    """Copies a host/device pytree onto every local device (leading device axis)."""
    n = jax.local_device_count()
    sharding = _local_sharding()

    def put(x):
        x = np.asarray(jax.device_get(x))
        return jax.device_put(np.broadcast_to(x, (n, *x.shape)), sharding)

    return jax.tree.map(put, tree)


def unreplicate(tree: Any) -> Any:
    """First replica of a replicated pytree, as host numpy arrays (a device-to-host copy)."""
    return jax.tree.map(lambda x: np.array(np.asarray(x.addressable_shards[0].data)[0]), tree)


def shard(batch: Any) -> Any:
    """Puts a host batch laid out [local_devices, ...] onto the local devices."""
    sharding = _local_sharding()
    return jax.tree.map(lambda x: jax.device_put(x, sharding), batch)


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


def pmap_step(step_fn: Callable, *, num_broadcast: int = 1, donate_state: bool = False) -> Callable:
    """pmaps `step_fn(state, batch, *broadcast)` over local devices with collectives on AXIS.

    State and batch carry a leading device axis; the `num_broadcast` trailing arguments
    (rng, severity level, ...) are the same on every device. With `donate_state`, the old
    state's buffers are reused for the new one.
    """
    fn = functools.partial(step_fn, axis_name=AXIS)
    return jax.pmap(fn, axis_name=AXIS, in_axes=(0, 0) + (None,) * num_broadcast,
                    donate_argnums=(0,) if donate_state else ())


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
_watch_stop = threading.Event()


def _coordination_client() -> Any:
    # JAX has no public handle on its coordination service's key-value store;
    # multihost_utils reaches it the same way.
    from jax._src import distributed

    return distributed.global_state.client


def _stop_process(line: str) -> None:
    print(f"brainjax: error: {line}", file=sys.stderr, flush=True)
    os._exit(1)


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
            notice = entries.get(FAILURE_KEY)
            if notice is not None:
                failed, _, message = notice.partition("\t")
                if int(failed) == me:
                    return
                try:
                    client.key_value_set(f"{ACK_PREFIX}{me}", "1", allow_overwrite=True)
                except Exception:  # noqa: BLE001
                    pass
                _stop_process(f"process {failed} failed: {message}; process {me} stops too")
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
    return True


_COMMUNICATION_MARKERS = ("gloo", "connection", "peer", "heartbeat", "unavailable", "socket", "nccl",
                          "coordination service", "barrier")


def is_communication_failure(err: BaseException) -> bool:
    """True for a runtime error from a collective or barrier that lost its peers (a
    process was killed or crashed), as opposed to an error of this process's own."""
    name = type(err).__name__
    text = str(err).lower()
    return name in ("XlaRuntimeError", "JaxRuntimeError") and any(m in text for m in _COMMUNICATION_MARKERS)
