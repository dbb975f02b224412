"""The flat format of a pytree: one 1-D array per dtype, the leaves raveled and
concatenated in `jax.tree.leaves` order, and the layout ([path, shape, dtype] per leaf)
that says what the bytes mean.

Orbax's save and restore cost is per array and per item, not per byte: the default
model's 171 arrays cost ~190 ms of CPU per save, the same floats as two arrays ~45 ms. So
checkpoints store the training state and the best model in this format, and a restore
compares the stored layout with the model the config builds, leaf by leaf, before it
reads an array (`compare_layouts` names the first difference).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class LayoutMismatch(ValueError):
    """A checkpoint's stored layout differs from the model this config builds."""


def dtype_name(x: Any) -> str:
    return str(x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)


def layout_of(tree: Any) -> list[list]:
    """[path, shape, dtype] of every leaf of `tree`, in `jax.tree.leaves` order: what a
    flat item's bytes mean (saved as JSON beside it)."""
    return [[jax.tree_util.keystr(path), [int(d) for d in np.shape(x)], dtype_name(x)]
            for path, x in jax.tree_util.tree_leaves_with_path(tree)]


def dtype_groups(tree: Any) -> dict[str, list]:
    """{dtype name: the leaves of that dtype, in leaf order}; a typed PRNG key is refused
    by leaf name (its bytes are not an array of a plain dtype)."""
    groups: dict[str, list] = {}
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
            raise TypeError(f"checkpoint leaf {jax.tree_util.keystr(path)} is a typed PRNG key; store "
                            "jax.random.key_data(key) in the state instead")
        groups.setdefault(dtype_name(x), []).append(x)
    return groups


def concat_leaves(tree: Any) -> dict[str, jax.Array]:
    """The flat format of `tree` as a pure jittable function: {dtype name: its leaves
    raveled and concatenated in leaf order}. `parallel.checkpoint_copy` runs it on device
    in the same dispatch as the copy the training thread makes for a save."""
    return {k: jnp.concatenate([jnp.ravel(x) for x in xs]) for k, xs in dtype_groups(tree).items()}


_concat_on_device = jax.jit(concat_leaves)


def flatten(tree: Any) -> dict[str, Any]:
    """{dtype name: 1-D array}: the leaves of `tree`, raveled and concatenated per dtype
    in leaf order. Device arrays that share one sharding are concatenated on device (the
    result has that sharding: orbax copies 1-3 arrays to the host instead of one per
    leaf); anything else on the host."""
    groups = dtype_groups(tree)
    leaves = [x for xs in groups.values() for x in xs]
    if leaves and all(isinstance(x, jax.Array) for x in leaves) and \
            len({x.sharding for x in leaves}) == 1:
        return _concat_on_device(tree)
    return {k: np.concatenate([np.ravel(np.asarray(x)) for x in xs]) for k, xs in groups.items()}


class Flat(NamedTuple):
    """A pytree already in the flat format: `arrays` (`concat_leaves` of it) and `like`,
    a tree of the same structure with its leaves' shapes and dtypes (arrays or
    `jax.ShapeDtypeStruct`s), from which the saved layout is computed."""
    arrays: dict[str, Any]
    like: Any


def flat_spec(layout: list[list]) -> tuple[tuple, dict[str, int]]:
    """Where each leaf of `layout` lies in its dtype's flat array: ((dtype, start, size,
    shape) per leaf, {dtype: total size})."""
    sizes: dict[str, int] = {}
    spec = []
    for _, shape, dtype in layout:
        size = int(np.prod(shape, dtype=np.int64))
        spec.append((dtype, sizes.get(dtype, 0), size, tuple(shape)))
        sizes[dtype] = sizes.get(dtype, 0) + size
    return tuple(spec), sizes


@functools.lru_cache(maxsize=16)
def _split_jit(treedef: Any, spec: tuple, sharding: jax.sharding.Sharding):
    """The inverse of `flatten` for one layout: slices and reshapes, placed with `sharding`."""
    def split(flat):
        return jax.tree.unflatten(treedef, [jax.lax.slice(flat[dtype], (start,), (start + size,)).reshape(shape)
                                            for dtype, start, size, shape in spec])
    return jax.jit(split, out_shardings=sharding)


def unflatten(flat: dict[str, jax.Array], template: Any, sharding: jax.sharding.Sharding) -> Any:
    """`template`'s tree from its flat item (`flatten`'s output), placed with `sharding`."""
    spec, _ = flat_spec(layout_of(template))
    return _split_jit(jax.tree.structure(template), spec, sharding)(flat)


def flat_targets(stored: dict[str, list[list]], templates: dict[str, Any],
                  sharding: jax.sharding.Sharding) -> dict[str, dict[str, jax.ShapeDtypeStruct]]:
    """Restore targets of the flat arrays of each template, after checking the stored
    layout against it (`LayoutMismatch` names the first leaf that differs)."""
    targets = {}
    for name, template in templates.items():
        wanted = layout_of(template)
        compare_layouts(stored[name], wanted, name)
        targets[name] = {dtype: jax.ShapeDtypeStruct((size,), jnp.dtype(dtype), sharding=sharding)
                         for dtype, size in flat_spec(wanted)[1].items()}
    return targets


def compare_layouts(stored: list[list], wanted: list[list], what: str) -> None:
    """Raises `LayoutMismatch` naming the first leaf where the stored layout of `what`
    differs from the `wanted` one (`layout_of` the template), or the leaf counts."""
    for saved, want in zip(stored, wanted):
        if list(saved) != want:
            raise LayoutMismatch(f"{what} leaf {want[0]}: the checkpoint has {saved[0]} {saved[1]} {saved[2]}, "
                                 f"this config builds {want[1]} {want[2]}")
    if len(stored) != len(wanted):
        raise LayoutMismatch(f"{what}: the checkpoint has {len(stored)} arrays, this config builds {len(wanted)}")
