"""Orbax checkpoints: one manager, one atomic step directory holding everything.

<workdir>/checkpoints/<step>/ holds three items, committed together by orbax's atomic
rename (a half-written step is a temporary directory that is never restored):
  state  the full TrainState (params, batch_stats, optimizer state, step, lr_scale)
  best   {params, batch_stats} of the epoch with the lowest validation loss so far
  loop   JSON: epoch, position in the epoch, plateau / early-stopping counters, the
         running training totals of the current epoch
Keeping the best model inside every step directory makes "latest" and "best" one fact:
no crash point can leave them naming different epochs (two managers saved one after the
other could). Saves are asynchronous: the caller hands over host arrays (the only
device-to-host copy) and orbax writes in the background. Inference restores `best` alone,
so it works whatever optimizer or trainable set the run was trained with.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

from brainjax.errors import UserError

log = logging.getLogger("brainjax")


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


_MISMATCH_MARKERS = ("tree structures do not match", "shape mismatch", "Requested shape",
                     "does not match the shape", "incompatible shape")


def _is_config_mismatch(err: Exception) -> bool:
    """orbax read the checkpoint but its tree or shapes differ from the template."""
    text = str(err)
    return any(marker.lower() in text.lower() for marker in _MISMATCH_MARKERS)


class Checkpoints:
    """Step-level checkpoints of one run (every process takes part in every call)."""

    def __init__(self, workdir: str, keep: int = 2):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True))

    def save(self, step: int, state: Any, best: Any, loop: dict) -> None:
        """Starts an asynchronous save of host pytrees `state` and `best` (model
        variables) and JSON `loop` at `step`; returns once orbax owns the data."""
        saved = self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), best=ocp.args.StandardSave(best), loop=ocp.args.JsonSave(loop)),
            force=True)
        if not saved:
            raise RuntimeError(f"orbax did not save step {step} in {self.directory} "
                               f"(existing steps {self.manager.all_steps()})")

    def _restore_newest(self, args_for_step) -> tuple[int, Any] | None:
        """Restores the newest readable step; an unreadable (corrupted, truncated) newest
        step is reported, removed (so later saves are not skipped as 'older') and the
        previous one used."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                return step, self.manager.restore(step, args=args_for_step(step))
            except Exception as err:  # noqa: BLE001  (orbax raises many types on bad files)
                path = os.path.join(self.directory, str(step))
                if _is_config_mismatch(err):
                    # A readable checkpoint of another model: the config is wrong, not the
                    # file. Never delete work because of a wrong flag.
                    raise UserError(
                        f"checkpoint {path} holds a different model than this config builds "
                        f"({str(err).splitlines()[0][:160]}); use the config the run was trained with "
                        f"(saved as {os.path.join(os.path.dirname(self.directory), 'config.json')}), "
                        "with the same --config.* overrides") from None
                log.warning("checkpoint %s is unreadable (%s: %s); removing it and using the previous step",
                            path, type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "")
                if jax.process_index() == 0:
                    shutil.rmtree(path, ignore_errors=True)
                self.manager.reload()
        return None

    def restore(self, state_template: Any, best_template: Any) -> tuple[Any, Any, dict] | None:
        """(state, best, loop) of the newest readable step, or None without checkpoints."""
        out = self._restore_newest(lambda step: ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(state_template)),
            best=ocp.args.StandardRestore(_abstract(best_template)), loop=ocp.args.JsonRestore()))
        if out is None:
            return None
        return out[1]["state"], out[1]["best"], dict(out[1]["loop"])

    def restore_best(self, best_template: Any) -> tuple[Any, dict] | None:
        """(best model variables, loop) of the newest readable step: params and
        batch_stats only, no optimizer state."""
        out = self._restore_newest(lambda step: ocp.args.Composite(
            best=ocp.args.StandardRestore(_abstract(best_template)), loop=ocp.args.JsonRestore()))
        if out is None:
            return None
        return out[1]["best"], dict(out[1]["loop"])

    @property
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
