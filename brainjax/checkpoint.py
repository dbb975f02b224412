"""Orbax checkpoints: resume from the latest, keep the best.

Two `CheckpointManager`s under the workdir:
  checkpoints/  every epoch's full state + loop state (JSON), newest 2 kept: resume point.
  best/         the state with the lowest validation loss: restore-best and evaluation.
A single manager with `best_fn` would delete the newest checkpoint whenever it is not the
best, and resuming would silently go back in time; two managers keep both guarantees.
Checkpoints are written only after an epoch's loss was checked finite, so a NaN never
overwrites the last good state.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    def __init__(self, workdir: str, keep: int = 2):
        workdir = os.path.abspath(workdir)
        self.latest = ocp.CheckpointManager(
            os.path.join(workdir, "checkpoints"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
        self.best = ocp.CheckpointManager(
            os.path.join(workdir, "best"),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True, best_fn=lambda m: m["val_loss"],
                                                 best_mode="min"))

    @staticmethod
    def _save(manager, epoch: int, state: Any, loop: dict, metrics: dict | None = None) -> None:
        manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    loop=ocp.args.JsonSave(loop)), metrics=metrics)

    def save(self, epoch: int, state: Any, loop: dict, *, val_loss: float, is_best: bool) -> None:
        """Saves host (unreplicated) `state` and JSON `loop` state after `epoch`."""
        self._save(self.latest, epoch, state, loop)
        if is_best:
            self._save(self.best, epoch, state, loop, metrics={"val_loss": float(val_loss)})
        self.wait()

    @staticmethod
    def _restore(manager, step: int, target: Any) -> tuple[Any, dict]:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                           loop=ocp.args.JsonRestore()))
        return out["state"], dict(out["loop"])

    def restore_latest(self, target: Any) -> tuple[Any, dict] | None:
        step = self.latest.latest_step()
        return None if step is None else self._restore(self.latest, step, target)

    def restore_best(self, target: Any) -> tuple[Any, dict] | None:
        step = self.best.best_step()
        return None if step is None else self._restore(self.best, step, target)

    @property
    def latest_epoch(self) -> int | None:
        return self.latest.latest_step()

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()
