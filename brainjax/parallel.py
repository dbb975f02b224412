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

import collections
import functools
import itertools
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
