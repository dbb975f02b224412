"""The one place that knows about `jax.pmap` and device layout.

Step functions in `train.py` are plain functions of (state, batch, rng) that take an
optional `axis_name`; this module binds the axis and wraps them. `jax.pmap` is in
maintenance mode upstream: moving to `jax.jit` + `jax.shard_map` touches only this file.

Layout: state is replicated on every local device (leading axis = local devices, a
NamedSharding over a 1-D 'batch' mesh); batches arrive from the pipeline already shaped
[local_devices, per_device_batch, ...]. Across processes (`jax.distributed`), pmap's
collectives span all devices of all processes.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "batch"


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
    """First replica of a replicated pytree, as host numpy arrays."""
    return jax.tree.map(lambda x: np.array(np.asarray(x.addressable_shards[0].data)[0]), tree)


def shard(batch: Any) -> Any:
    """Puts a host batch laid out [local_devices, ...] onto the local devices."""
    sharding = _local_sharding()
    return jax.tree.map(lambda x: jax.device_put(x, sharding), batch)


def pmap_step(step_fn: Callable, *, num_broadcast: int = 1, donate_state: bool = False) -> Callable:
    """pmaps `step_fn(state, batch, *broadcast)` over local devices with collectives on AXIS.

    State and batch carry a leading device axis; the `num_broadcast` trailing arguments
    (rng, severity level, ...) are the same on every device. With `donate_state`, the old
    state's buffers are reused for the new one.
    """
    fn = functools.partial(step_fn, axis_name=AXIS)
    return jax.pmap(fn, axis_name=AXIS, in_axes=(0, 0) + (None,) * num_broadcast,
                    donate_argnums=(0,) if donate_state else ())
