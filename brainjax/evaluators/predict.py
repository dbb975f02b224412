"""Whole-split predictions: compiled eval steps and every example of a split exactly
once, across all devices and all processes.

Each process runs its share of the split (padded batches with a mask, the same number of
batches on every process), then the padded outputs are gathered from all processes, the
padding dropped and the rows put in split order (by the example's global index). Every
process therefore holds the same full-split predictions, computes the same validation
loss and makes the same plateau / early-stopping / best decisions; metrics and bootstrap
intervals do not depend on the process or device layout.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np

from brainjax import degrade, parallel, steps


def make_eval_fns(model: Any, corruptions: tuple[str, ...] = (), seed_protocol: bool = False) -> dict[str | None, Callable]:
    """pmapped eval steps: None -> clean, name -> under that corruption (+ the seed chain).
    A model with a quality head also returns its scan-quality score per example."""
    names = (None, *corruptions, *((degrade.SEED_CHAIN,) if seed_protocol else ()))
    with_quality = getattr(model, "quality_head", None) is not None
    return {name: parallel.compiled_step(functools.partial(steps.eval_step, model=model, corruption=name,
                                                       with_quality=with_quality), num_broadcast=2)
            for name in names}


def real_examples(batch: Mapping[str, np.ndarray], keys: tuple[str, ...]) -> list[np.ndarray]:
    """`keys` of a padded eval batch [devices, per_device, ...], flattened over devices,
    without the padding (mask 0) rows."""
    mask = parallel.flat_rows(batch["mask"]) > 0
    return [parallel.flat_rows(batch[k])[mask] for k in keys]


def predict_outputs(eval_fn: Callable, rvariables: Any, batches: Iterable[Mapping[str, np.ndarray]],
                    rng: jax.Array, level: float = 0.0) -> dict[str, np.ndarray]:
    """{"logits", "label", "index"[, "quality", "source"]} of every example of the split, in split
    order, gathered from all processes (host numpy). `rvariables`: replicated variables."""
    outputs, carried, masks = [], {}, []
    level = np.float32(level)
    for batch in batches:
        out = eval_fn(rvariables, parallel.shard({k: v for k, v in batch.items() if k not in ("mask", "source")}),
                      rng, level)
        outputs.append(out if isinstance(out, dict) else {"logits": out})  # fetched after the loop
        for key in ("label", "index", "source"):  # "source": a multi-source dataset's
            if key in batch:
                carried.setdefault(key, []).append(parallel.flat_rows(batch[key]))
        masks.append(batch["mask"].reshape(-1))
    local = {k: np.concatenate([parallel.flat_rows(parallel.host_local(o[k])) for o in outputs]).astype(np.float32) for k in outputs[0]}
    local.update({k: np.concatenate(v).astype(np.int32) for k, v in carried.items()})
    local["mask"] = np.concatenate(masks)
    every = parallel.gather_from_processes(local)
    every = {k: v.reshape(-1, *v.shape[2:]) for k, v in every.items()}
    keep = every["mask"] > 0
    order = np.argsort(every["index"][keep], kind="stable")
    return {k: v[keep][order] for k, v in every.items() if k != "mask"}


def predict_split(eval_fn: Callable, rvariables: Any, batches: Iterable[Mapping[str, np.ndarray]],
                  rng: jax.Array, level: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, labels, indices) of every example of the split (see `predict_outputs`)."""
    out = predict_outputs(eval_fn, rvariables, batches, rng, level)
    return out["logits"], out["label"], out["index"]
