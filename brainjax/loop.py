"""The one training loop: any batch source, any pmapped step.

`fit` drives a step over the batches of a `BatchSource` epoch by epoch and owns what
every training run shares: device prefetch, metric windows fetched without stalling
dispatch, the NaN guard, step-level asynchronous checkpoints (with the best model kept
in the same atomic step directory), exact mid-epoch resume, SIGTERM / SIGINT
preemption, validation, reduce-on-plateau and early stopping, and the metric writers.
The image path (`brainjax.train`) and the cached-feature head path
(`brainjax.feature_cache`) are two instances of it: they differ only in their batch
source, their step and their validation function.

Resume is exact: a checkpoint records the epoch and the number of steps already taken
in it; the source replays that epoch's shuffle and skips those batches, and the step's
randomness is folded from the global step, so the resumed run computes bit for bit
what the uninterrupted one would have.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Protocol

import jax
import ml_collections
import numpy as np

from brainjax import checkpoint, parallel
from brainjax import state as state_lib
from brainjax.writers import Writers

log = logging.getLogger("brainjax")


class BatchSource(Protocol):
    """Host batches laid out [local_devices, per_device_batch, ...]."""

    steps_per_epoch: int

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Mapping[str, np.ndarray]]:
        """The batches of `epoch` from its `start`-th on (same order on every call)."""


class Preempted(Exception):
    """Raised after a preemption signal, once the checkpoint at the current step is on disk."""


def new_progress() -> dict:
    """The loop's JSON state: what a checkpoint needs besides the TrainState."""
    return dict(epoch=0, step_in_epoch=0, best_val_loss=math.inf, best_epoch=-1, bad_epochs=0,
                plateau_best=math.inf, plateau_wait=0, lr_scale=1.0, stop=False, improved=False,
                totals={"loss_sum": 0.0, "correct": 0.0, "count": 0.0})


class Plateau:
    """Keras ReduceLROnPlateau / EarlyStopping logic on the validation loss (host; every
    process sees the same gathered validation loss, so all decide alike)."""

    @staticmethod
    def update(progress: dict, val_loss: float, config: ml_collections.ConfigDict) -> None:
        es, sched = config.early_stopping, config.schedule
        improved = val_loss < progress["best_val_loss"] - es.min_delta
        if improved:
            progress.update(best_val_loss=val_loss, best_epoch=progress["epoch"], bad_epochs=0)
        else:
            progress["bad_epochs"] += 1
        if sched.name == "plateau":
            if val_loss < progress["plateau_best"] - sched.min_delta:
                progress.update(plateau_best=val_loss, plateau_wait=0)
            else:
                progress["plateau_wait"] += 1
                if progress["plateau_wait"] >= sched.patience:
                    progress["lr_scale"] = max(progress["lr_scale"] * sched.factor,
                                               sched.min_lr / config.optimizer.learning_rate)
                    progress["plateau_wait"] = 0
        progress["stop"] = bool(es.enabled and progress["bad_epochs"] >= es.patience)
        progress["improved"] = bool(improved)


class PreemptionSignals:
    """Context manager: SIGTERM / SIGINT set a flag instead of killing the process, so the
    loop can finish the step, checkpoint and exit. With several processes SIGTERM is left
    to JAX's preemption sync manager (all processes stop at the same step), and Ctrl-C
    on any one process is turned into a SIGTERM to itself, so it goes through the same
    sync point instead of saving alone while the others wait in a collective."""

    def __init__(self):
        self.received: int | None = None
        self.interrupted = False
        self._old: dict = {}

    def __enter__(self) -> "PreemptionSignals":
        if threading.current_thread() is threading.main_thread():
            sigs = [signal.SIGINT] + ([signal.SIGTERM] if jax.process_count() == 1 else [])
            for sig in sigs:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        del frame
        if signum == signal.SIGINT and (self.interrupted or self.received is not None):
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        if signum == signal.SIGINT and jax.process_count() > 1:
            self.interrupted = True
            log.warning("Ctrl-C: every process will save a checkpoint at the same step and stop (Ctrl-C again to "
                        "stop at once)")
            os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption notifier: every process, same step
            return
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def requested(self, step: int) -> bool:
        return self.received is not None or parallel.preemption_sync_point(step)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def check_finite(value: float, what: str, step: int, steps_per_epoch: int, ckpt: checkpoint.Checkpoints) -> None:
    """Stops on a NaN/inf before it can reach a checkpoint; says what was kept."""
    if not math.isfinite(value):
        kept = ckpt.latest_step
        epoch = (step - 1) // steps_per_epoch
        if kept is None:
            where = "no checkpoint had been written yet"
        else:
            at = (f"end of epoch {kept // steps_per_epoch}" if kept % steps_per_epoch == 0
                  else f"in epoch {kept // steps_per_epoch + 1}")
            where = f"the last good checkpoint (step {kept}, {at}, {ckpt.directory}) is kept"
        raise FloatingPointError(
            f"non-finite {what} ({value}) at step {step}, epoch {epoch + 1}; training stopped and {where}. "
            "Lower config.optimizer.learning_rate (or check the input data), then rerun to resume.")


class MetricWindows:
    """Per-step device metrics, summed per window. A closed window's copy to host starts
    at once (async) and is read one window later, so fetching never waits for the step
    that was just dispatched."""

    def __init__(self):
        self.current: list = []
        self.last_step = 0
        self.inflight: list[tuple[int, list]] = []

    def add(self, step: int, metrics: Any, close: bool) -> None:
        self.current.append(metrics)
        self.last_step = step
        if close:
            self._close()

    def _close(self) -> None:
        if self.current:
            for leaf in jax.tree.leaves(self.current):
                leaf.copy_to_host_async()
            self.inflight.append((self.last_step, self.current))
            self.current = []

    def ready(self, flush: bool = False) -> list[tuple[int, dict]]:
        """(last step, host sums) of the windows that are done (all of them with `flush`)."""
        if flush:
            self._close()
        keep = 0 if flush else 1
        out = []
        while len(self.inflight) > keep:
            step, window = self.inflight.pop(0)
            host = [parallel.first_device(m) for m in window]
            out.append((step, {k: float(sum(m[k] for m in host)) for k in host[0]}))
        return out


def fit(config: ml_collections.ConfigDict, workdir: str, *, state: Any, step_fn: Callable, source: BatchSource,
        validate: Callable[[Any], tuple[float, float]], rng: jax.Array, writers: Writers,
        tag: str = "", record: dict | None = None) -> tuple[dict, dict]:
    """Trains `state` (host TrainState) with the pmapped, state-donating `step_fn(rstate,
    batch, rng)` over `source` until config.num_epochs, early stopping or preemption,
    resuming from <workdir>/checkpoints if they exist. `validate(rstate)` returns the
    (loss, accuracy) of the validation split, identical on every process.

    Returns (best model variables {params, batch_stats} as host arrays, final progress).
    Raises `Preempted` after saving a checkpoint when a preemption signal arrived.
    `record` (run_record.record) is stored in every checkpoint for the resume check.
    """
    ckpt = checkpoint.Checkpoints(workdir, record=record)
    try:
        return _fit(config, ckpt, state=state, step_fn=step_fn, source=source, validate=validate, rng=rng,
                    writers=writers, tag=tag, workdir=workdir)  # ends with ckpt.wait(): save errors raise
    finally:
        ckpt.close()  # waits for every save; logs (not raises) a failed one, not to hide the error in flight


def model_of(state: Any) -> dict:
    """{params, batch_stats} of a (host) TrainState: what `best` holds."""
    return {"params": state.params, "batch_stats": state.batch_stats}


def _fit(config, ckpt, *, state, step_fn, source, validate, rng, writers, tag, workdir):
    run = FitRun(config, ckpt, step_fn=step_fn, source=source, validate=validate, rng=rng, writers=writers, tag=tag)
    if not run.start(state, workdir):
        return run.best, run.progress
    with PreemptionSignals() as signals:
        while run.progress["epoch"] < config.num_epochs and not run.progress["stop"]:
            run.epoch(signals)
    ckpt.wait()
    if run.progress["best_epoch"] >= 0:
        log.info("restored best checkpoint (epoch %d, val_loss %.4f)", run.progress["best_epoch"] + 1,
                 run.progress["best_val_loss"])
    return run.best, run.progress


class EpochClock:
    """images/s of an epoch, compilation left out: the run's first step (the one that
    compiles) restarts the clock at its end."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.images, self.since = 0.0, self.t0

    def restart(self, metrics: Any) -> None:
        jax.block_until_ready(metrics)
        self.since, self.images = time.perf_counter(), 0.0

    def rate(self) -> float | None:
        seconds = time.perf_counter() - self.since
        return self.images / seconds if self.images and seconds > 0 else None


class SaveSchedule:
    """When a step-level checkpoint is due: every `checkpoint_every_steps` steps, or at a
    metric-window end once `checkpoint_every_seconds` have passed on any process."""

    def __init__(self, config: Any):
        self.every_steps = int(config.checkpoint_every_steps or 0)
        self.every_seconds = float(config.checkpoint_every_seconds or 0)
        self.last_time, self.last_step = time.monotonic(), 0

    def saved(self, step: int) -> None:
        self.last_time, self.last_step = time.monotonic(), step

    def due(self, step: int, window_end: bool) -> bool:
        due = bool(self.every_steps) and step - self.last_step >= self.every_steps
        if self.every_seconds and window_end and not due:  # wall clocks differ: follow any process
            due = parallel.any_process(time.monotonic() - self.last_time >= self.every_seconds)
        return due


def epoch_record(epoch: int, step: int, totals: dict, val_loss: float, val_acc: float, lr: float,
                 ips: float | None, seconds: float, tag: str) -> dict:
    """The epoch's metrics.jsonl record."""
    return dict(kind="epoch", epoch=epoch, step=step, loss=totals["loss_sum"] / max(totals["count"], 1),
                accuracy=totals["correct"] / max(totals["count"], 1), val_loss=val_loss, val_accuracy=val_acc,
                learning_rate=lr, images_per_sec=ips, epoch_seconds=seconds,
                **({"feature_cache": True} if tag == "cached" else {}))


def log_epoch(config: Any, progress: dict, record: dict, epoch_times: list[float], tag: str) -> None:
    """The epoch's log line (and the early-stopping one)."""
    remaining = 0 if progress["stop"] else config.num_epochs - progress["epoch"]
    eta = float(np.mean(epoch_times)) * remaining
    ips = record["images_per_sec"]
    log.info("epoch %d/%d  loss %.4f acc %.4f | val_loss %.4f val_acc %.4f%s | lr %.2e | %s | ETA %s%s",
             progress["epoch"], config.num_epochs, record["loss"], record["accuracy"], record["val_loss"],
             record["val_accuracy"], " *" if progress["improved"] else "", record["learning_rate"],
             f"{ips:.0f} img/s" if ips else "img/s n/a", format_duration(eta),
             " (cached features)" if tag == "cached" else "")
    if progress["stop"]:
        log.info("early stopping: no val_loss improvement for %d epochs (best epoch %d)",
                 progress["bad_epochs"], progress["best_epoch"] + 1)


def stop_for_preemption(ckpt, progress: dict, steps_per_epoch: int, step: int, signals: PreemptionSignals) -> None:
    """Waits for the checkpoint just saved at `step`, logs where the run stands and how
    to resume, and raises `Preempted`."""
    ckpt.wait()
    name = (signal.Signals(signals.received).name if signals.received
            else "Ctrl-C" if signals.interrupted else "preemption notice")
    spe = steps_per_epoch
    log.warning("%s: saved a checkpoint at step %d (epoch %d, step %d of %d) in %s; rerun the same "
                "command to resume from it", name, step, progress["epoch"] + (progress["step_in_epoch"] > 0),
                progress["step_in_epoch"] or spe, spe, ckpt.directory)
    raise Preempted(step)


class FitRun:
    """The state of one `fit`: the replicated training state, the best model, the loop's
    JSON progress, metric windows, save timing. Each method is one step of the loop."""

    def __init__(self, config, ckpt, *, step_fn, source, validate, rng, writers, tag):
        self.config, self.ckpt, self.step_fn, self.source = config, ckpt, step_fn, source
        self.validate, self.rng, self.writers, self.tag = validate, rng, writers, tag
        self.schedule = SaveSchedule(config)
        self.save_from = parallel.checkpoint_source(config.checkpoint_from)
        self.log_every = max(int(config.log_every_steps), 1)
        self.steps_per_epoch = source.steps_per_epoch
        self.windows = MetricWindows()
        self.epoch_times: list[float] = []
        self.progress, self.best, self.rstate = new_progress(), None, None
        self.compiled = False

    def start(self, state: Any, workdir: str) -> bool:
        """Restores the newest checkpoint (if any), cuts metrics.jsonl back to the step it
        starts from (0 when fresh: a run killed before its first checkpoint, or mid-line,
        leaves nothing behind) and replicates the state. False: training is complete."""
        self.best = model_of(state)
        restored = self.ckpt.restore(state, self.best)
        if restored is not None:
            state, self.best, self.progress = restored
        self.writers.truncate_after(int(state.step) if restored is not None else 0)
        progress = self.progress
        if restored is not None:
            log.info("resuming from %s at step %d (epoch %d, step %d of %d in it)", self.ckpt.directory,
                     int(state.step), progress["epoch"] + 1, progress["step_in_epoch"], self.steps_per_epoch)
        if progress["epoch"] >= self.config.num_epochs or progress["stop"]:
            log.info("training already complete in %s (epoch %d); evaluating", workdir, progress["epoch"])
            return False
        self.rstate = parallel.replicate(state.replace(lr_scale=np.float32(progress["lr_scale"])))
        self.schedule.last_step = progress["epoch"] * self.steps_per_epoch + progress["step_in_epoch"]
        return True

    def flush_windows(self, flush: bool) -> None:
        for step, w in self.windows.ready(flush):
            check_finite(w["loss_sum"], "training loss", step, self.steps_per_epoch, self.ckpt)
            for k in self.progress["totals"]:
                self.progress["totals"][k] += w[k]
            self.writers.write(kind="train_window", step=step, epoch=(step - 1) // self.steps_per_epoch + 1,
                               loss=w["loss_sum"] / w["count"], accuracy=w["correct"] / w["count"])

    def save(self, step: int) -> None:
        """The training thread only dispatches a device-side snapshot (the next step
        donates rstate); the host copy, where asked, is made by the save itself, on the
        worker thread with a background handover. progress is deep-copied: orbax
        serialises it in the background while the loop goes on."""
        self.ckpt.save(step, self.ckpt.snapshot(self.rstate), self.best, copy.deepcopy(self.progress),
                       host_copy=self.save_from == "host")
        self.schedule.saved(step)

    def epoch(self, signals: PreemptionSignals) -> None:
        """One epoch from where the progress stands: its steps, then validation, the
        epoch record and the epoch-end checkpoint."""
        clock = EpochClock()
        preempted = self.train_steps(signals, clock)
        self.end_epoch(clock, preempted, signals)

    def train_steps(self, signals: PreemptionSignals, clock: EpochClock) -> bool:
        """The epoch's remaining steps, with step-level saves; True if preemption was
        requested at its last step (the epoch-end save then stops the run)."""
        epoch, start = self.progress["epoch"], self.progress["step_in_epoch"]
        preempted = False
        for i, batch in enumerate(parallel.prefetch_to_device(self.source.epoch(epoch, start), 2), start=start):
            self.rstate, metrics = self.step_fn(self.rstate, batch, self.rng)
            step = epoch * self.steps_per_epoch + i + 1
            if not self.compiled:
                clock.restart(metrics)
                self.compiled = True
            else:
                clock.images += float(batch["label"].size) * jax.process_count()
            window_end = (i + 1) % self.log_every == 0  # the same on every process
            self.windows.add(step, metrics, close=window_end)
            self.flush_windows(False)
            self.progress["step_in_epoch"] = i + 1
            preempted = signals.requested(step)
            if i + 1 == self.steps_per_epoch:
                break  # the epoch-end checkpoint follows validation
            if self.schedule.due(step, window_end) or preempted:
                self.flush_windows(True)
                self.save(step)
            if preempted:
                stop_for_preemption(self.ckpt, self.progress, self.steps_per_epoch, step, signals)
        self.flush_windows(True)
        return preempted

    def end_epoch(self, clock: EpochClock, preempted: bool, signals: PreemptionSignals) -> None:
        """Validation, plateau / early stopping, the best model, the epoch record, the
        epoch-end save and its log line."""
        config, progress, spe = self.config, self.progress, self.steps_per_epoch
        ips = clock.rate()
        val_loss, val_acc = self.validate(self.rstate)
        end_step = (progress["epoch"] + 1) * spe
        check_finite(val_loss, "validation loss", end_step, spe, self.ckpt)
        lr_used = state_lib.learning_rate_at(config, spe, end_step - 1, progress["lr_scale"])
        Plateau.update(progress, val_loss, config)
        totals = progress["totals"]
        progress.update(epoch=progress["epoch"] + 1, step_in_epoch=0, totals={"loss_sum": 0.0, "correct": 0.0,
                                                                              "count": 0.0})
        self.rstate = self.rstate.replace(lr_scale=parallel.replicate(np.float32(progress["lr_scale"])))
        if progress["improved"]:
            self.best = model_of(parallel.checkpoint_state(self.rstate, self.save_from))
        self.epoch_times.append(time.perf_counter() - clock.t0)
        record = epoch_record(progress["epoch"], end_step, totals, val_loss, val_acc, lr_used, ips,
                              self.epoch_times[-1], self.tag)
        self.writers.write(**record)
        self.save(end_step)
        log_epoch(config, progress, record, self.epoch_times, self.tag)
        if preempted and progress["epoch"] < config.num_epochs and not progress["stop"]:
            stop_for_preemption(self.ckpt, progress, spe, end_step, signals)
