"""Orbax checkpoints: one manager, one atomic step directory holding everything.

<workdir>/checkpoints/<step>/ holds two items, committed together by orbax's atomic
rename (a half-written step is a temporary directory that is never restored):
  flat  arrays: {"state": the full TrainState (params, batch_stats, optimizer state,
        step, lr_scale), "best": {params, batch_stats} of the epoch with the lowest
        validation loss so far}, each in the flat format (`brainjax.flat_tree`: one 1-D
        array per dtype; orbax's cost is per array and per item, not per byte)
  meta  JSON: {"layout": every leaf's path, shape and dtype, for each of the two;
        "loop": epoch, position in the epoch, plateau / early-stopping counters, the
        running training totals; "run": what the run is (`run_record`), for the resume
        check}
Restore checks the stored layout against the model the config builds, leaf by leaf,
before reading an array, and names the first difference. A step in a format an older
brainjax wrote is one line saying so.
Restore never deletes: a step orbax positively reports as incomplete or corrupted is
renamed `<step>.unreadable` and the previous one used; any other error (an I/O error
from flaky storage, a MemoryError, a reworded message) stops the run with the files in
place, and every process restores the same step.
Keeping the best model inside every step directory makes "latest" and "best" one fact:
no crash point can leave them naming different epochs. Saves are asynchronous: the
training thread hands over a device-side snapshot of the replicated state, already
concatenated per dtype on device (`Checkpoints.snapshot`); the save copies it to the host
first or lets orbax do it (`config.checkpoint_from`), and the files are written in the
background (on the `Checkpoints` worker thread with one process, by orbax's asynchronous
save with several). Restores place the arrays with an explicit target sharding
(replicated to resume training; one device for inference), so a checkpoint saved on
another topology restores safely. Inference restores `best` alone, so it works whatever
optimizer or trainable set the run was trained with.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from brainjax import flat_tree, parallel, step_recovery
from brainjax.errors import UserError

log = logging.getLogger("brainjax")


# The restore scan and the checks that read checkpoints without a manager live in
# brainjax/step_recovery.py; these names are part of this module's API too.
CheckpointError = step_recovery.CheckpointError
classify_restore_error = step_recovery.classify_restore_error
newest_meta, has_steps = step_recovery.newest_meta, step_recovery.has_steps
refuse_older_formats = step_recovery.refuse_older_formats
OK, CORRUPT, MISMATCH, ERROR = step_recovery.OK, step_recovery.CORRUPT, step_recovery.MISMATCH, step_recovery.ERROR
_first_line = step_recovery.first_line


def _one_device() -> jax.sharding.Sharding:
    """Where inference wants restored variables: this process's first device."""
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


class SaveError(UserError):
    """A checkpoint save failed on storage (OSError); the steps saved before it are on disk."""


def background_default() -> bool:
    """Whether saves hand over on a worker thread by default: with one process only.
    Orbax's save runs a cross-process barrier that, by default, is a device collective;
    issued from a second thread it could interleave with the training step's
    collectives in a different order on each process, so several processes keep the
    handover on the training thread."""
    return jax.process_count() == 1


def item_handlers() -> dict[str, ocp.CheckpointHandler]:
    """The handler of every item a step may hold. The flat items are written without
    compression: their bytes are float weights, which compression barely shrinks, and it
    cost a sixth of orbax's CPU per save (arrays the size of the default state, two runs
    side by side: 62 / 54 ms compressed, 53 / 43 ms not).
    Readers take either (zarr records the codec per array), so steps saved compressed
    are still read. OCDBT stays on: without it orbax still runs its merge at every save
    and logs a warning that there was nothing to merge."""
    return {"flat": ocp.PyTreeCheckpointHandler(use_compression=False), "meta": ocp.JsonCheckpointHandler()}


def step_args(state: flat_tree.Flat, best: flat_tree.Flat, loop: dict, record: dict | None,
              host_copy: bool) -> ocp.args.Composite:
    """The two items of a step: `flat` (the arrays; copied to the host first with
    `host_copy`) and `meta` (layouts, the loop's JSON progress, the run record). Two
    items: orbax's cost is per item as much as per array."""
    layout = {"state": flat_tree.layout_of(state.like), "best": flat_tree.layout_of(best.like)}
    arrays = {"state": state.arrays, "best": best.arrays}  # on device for device arrays
    if host_copy:
        arrays = jax.device_get(arrays)
    meta = {"layout": layout, "loop": loop, **({"run": record} if record else {})}
    return ocp.args.Composite(flat=ocp.args.PyTreeSave(arrays), meta=ocp.args.JsonSave(meta))


def read_step(manager: ocp.CheckpointManager, step: int, templates: dict[str, Any],
              sharding: jax.sharding.Sharding) -> dict:
    """{name: tree for each template, 'loop': dict} of `step`. The stored layout is
    compared with the templates before any array is read, and only the arrays of the
    templates asked for are read (inference reads `best` alone)."""
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    target = flat_tree.flat_targets(meta["layout"], templates, sharding)
    flat = manager.restore(step, args=ocp.args.Composite(flat=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True)))["flat"]
    out = {name: flat_tree.unflatten(flat[name], template, sharding) for name, template in templates.items()}
    out["loop"] = meta["loop"]
    return out


class SaveWorker:
    """At most one save in flight: `submit` runs it on a worker thread (background) or at
    once; `finish` waits for it and raises its error. A storage error (OSError), on
    either thread, becomes a `SaveError` naming the step (the steps before it stay on
    disk); anything else (a lost peer process) is raised as it came, for `run.fail` to
    name."""

    def __init__(self, background: bool, directory: str, manager: ocp.CheckpointManager):
        self.directory, self.manager = directory, manager
        self._pool = (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="brainjax-checkpoint")
                      if background else None)
        self._in_flight: tuple[int, concurrent.futures.Future] | None = None

    def submit(self, step: int, save: Callable[[], None]) -> None:
        """Waits for the save before, then runs `save` (in the background: hands it over)."""
        self.finish()
        if self._pool is not None:
            self._in_flight = (step, self._pool.submit(save))
            return
        try:
            save()
        except OSError as err:
            raise self._save_error(step, err) from err

    def finish(self) -> None:
        """Waits for the save in flight; raises its error."""
        if self._in_flight is None:
            return
        step, future = self._in_flight
        self._in_flight = None
        err = future.exception()
        if isinstance(err, OSError):
            raise self._save_error(step, err) from err
        if err is not None:  # not storage (e.g. a lost peer): as it came, for run.fail to name
            raise err

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _save_error(self, step: int, err: BaseException) -> "SaveError":
        return SaveError(f"saving checkpoint step {step} in {self.directory} failed: {_first_line(err)}. "
                         f"The steps saved before it are kept ({self.manager.all_steps()}); fix the cause "
                         "(storage, space, permissions) and rerun the same command to resume.")


class Checkpoints:
    """Step-level checkpoints of one run (every process takes part in every call).

    With `background` (default: one process, see `background_default`), `save` returns
    as soon as a worker thread owns the arrays: the worker makes the host copy (when
    asked) and calls orbax, which writes the files on that worker (synchronously: no
    orbax thread of its own; without the worker, orbax's asynchronous save). One save is in flight at a
    time (`SaveWorker`): the next `save`, `wait`, `latest_step` or `close` first waits
    for it and raises its error, if any.
    """

    def __init__(self, workdir: str, keep: int = 2, background: bool | None = None, record: dict | None = None):
        """`record`: what the run is (`run_record.record`), stored in every step's meta
        item for the resume check."""
        self.record = record
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.background = background_default() if background is None else bool(background)
        # With the background worker, orbax writes synchronously on it: the training
        # thread is already free, and orbax's own async commit would start two more
        # threads per save (~5 ms CPU each save; BUILD_NOTES, checkpoint figures).
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=not self.background),
            item_handlers=item_handlers())
        self.worker = SaveWorker(self.background, self.directory, self.manager)
        self._best_flat: tuple[Any, flat_tree.Flat] | None = None  # (the `best` object, its Flat)
        self.recovery = step_recovery.StepRecovery(self.manager, self.directory)

    def snapshot(self, rstate: Any) -> Any:
        """What the training thread hands `save` for the replicated training state (laid
        out by `parallel`): a device-side copy that later steps cannot donate away, made
        in one dispatch, already concatenated per dtype on device (`flat_tree.Flat`: 1-3
        arrays, where a copy per leaf then a concatenation cost two passes and, in pmap
        mode, a global array per leaf on the training thread)."""
        return flat_tree.Flat(parallel.checkpoint_copy(rstate, flat_tree.concat_leaves), parallel.replica_shapes(rstate))

    def save(self, step: int, state: Any, best: Any, loop: dict, host_copy: bool = False) -> None:
        """Starts an asynchronous save of pytrees `state` and `best` (model variables;
        device arrays replicated over every device, see `snapshot`, host arrays, or a
        `Flat`) and JSON `loop` at `step`. `host_copy`: copy device arrays to host
        numpy before orbax sees them (config.checkpoint_from='host'), on the worker
        thread when saving in the background. Returns once the data is handed over (in
        the background: to the worker, so arrays must not be donated or changed after)."""
        self.worker.submit(step, functools.partial(self._save_now, step, state, best, loop, host_copy))

    def finish_handover(self) -> None:
        """Waits for the save in flight on the worker thread; raises its error."""
        self.worker.finish()

    def _save_now(self, step: int, state: Any, best: Any, loop: dict, host_copy: bool) -> None:
        state = state if isinstance(state, flat_tree.Flat) else flat_tree.Flat(flat_tree.flatten(state), state)
        args = step_args(state, self._flat_best(best), loop, self.record, host_copy)
        if not self.manager.save(step, args=args, force=True):
            raise RuntimeError(f"orbax did not save step {step} in {self.directory} "
                               f"(existing steps {self.manager.all_steps()})")

    def _flat_best(self, best: Any) -> flat_tree.Flat:
        """`best` in the flat format, flattened once per object: the loop hands the same
        `best` to every save until validation improves (then a new object), so later saves
        reuse its concatenation. The loop never changes a `best` in place."""
        if isinstance(best, flat_tree.Flat):
            return best
        if self._best_flat is None or self._best_flat[0] is not best:
            self._best_flat = (best, flat_tree.Flat(flat_tree.flatten(best), best))
        return self._best_flat[1]

    def restore(self, state_template: Any, best_template: Any) -> tuple[Any, Any, dict] | None:
        """(state, best, loop) of the newest readable step, or None without checkpoints."""
        templates = {"state": state_template, "best": best_template}
        out = self.recovery.restore_newest(lambda step: read_step(self.manager, step, templates,
                                                                        parallel.replicated_sharding()))
        if out is None:
            return None
        return out[1]["state"], out[1]["best"], dict(out[1]["loop"])

    def restore_best(self, best_template: Any) -> tuple[Any, dict] | None:
        """(best model variables, loop) of the newest readable step: params and
        batch_stats only, no optimizer state."""
        out = self.recovery.restore_newest(lambda step: read_step(self.manager, step, {"best": best_template}, _one_device()))
        if out is None:
            return None
        return out[1]["best"], dict(out[1]["loop"])

    @property
    def latest_step(self) -> int | None:
        self.finish_handover()
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        self.finish_handover()
        return list(self.manager.all_steps())

    def wait(self) -> None:
        """Until every save so far is on disk; raises a failed background save's error."""
        try:
            self.finish_handover()
        finally:
            self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for the save in flight (its error is logged, not raised: `close` runs in
        `finally` blocks, where an exception would hide the one being handled; call
        `wait` first to see it) and closes orbax."""
        try:
            self.finish_handover()
        except Exception as err:  # noqa: BLE001  (logged: see the docstring)
            log.error("checkpoint save failed: %s", _first_line(err))
        finally:
            self.worker.shutdown()
            self.manager.close()
