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
    progress = new_progress()
    best = model_of(state)
    restored = ckpt.restore(state, best)
    if restored is not None:
        state, best, progress = restored
    # Every start cuts metrics.jsonl back to the step it starts from (0 when fresh): a run
    # killed before its first checkpoint, or mid-line, leaves nothing behind.
    writers.truncate_after(int(state.step) if restored is not None else 0)
    if restored is not None:
        log.info("resuming from %s at step %d (epoch %d, step %d of %d in it)", ckpt.directory, int(state.step),
                 progress["epoch"] + 1, progress["step_in_epoch"], source.steps_per_epoch)
    if progress["epoch"] >= config.num_epochs or progress["stop"]:
        log.info("training already complete in %s (epoch %d); evaluating", workdir, progress["epoch"])
        return best, progress

    every_steps = int(config.get("checkpoint_every_steps", 0) or 0)
    every_seconds = float(config.get("checkpoint_every_seconds", 0) or 0)
    save_from = parallel.checkpoint_source(config.get("checkpoint_from", "auto"))
    log_every = max(int(config.log_every_steps), 1)
    steps_per_epoch = source.steps_per_epoch
    rstate = parallel.replicate(state.replace(lr_scale=np.float32(progress["lr_scale"])))
    del state
    windows = MetricWindows()
    last_save_time = time.monotonic()
    last_save_step = progress["epoch"] * steps_per_epoch + progress["step_in_epoch"]
    compiled_once = False
    epoch_times: list[float] = []

    def flush_windows(flush: bool) -> None:
        for step, w in windows.ready(flush):
            check_finite(w["loss_sum"], "training loss", step, steps_per_epoch, ckpt)
            for k in progress["totals"]:
                progress["totals"][k] += w[k]
            writers.write(kind="train_window", step=step, epoch=(step - 1) // steps_per_epoch + 1,
                          loss=w["loss_sum"] / w["count"], accuracy=w["correct"] / w["count"])

    def save(step: int) -> None:
        nonlocal last_save_time, last_save_step
        # The training thread only dispatches a device-side snapshot (the next step
        # donates rstate); the host copy, where asked, is made by the save itself: on the
        # worker thread with a background handover. progress is deep-copied: orbax
        # serialises it in the background while the loop goes on.
        ckpt.save(step, ckpt.snapshot(rstate), best, copy.deepcopy(progress), host_copy=save_from == "host")
        last_save_time, last_save_step = time.monotonic(), step

    def stop_for_preemption(step: int) -> None:
        ckpt.wait()
        name = (signal.Signals(signals.received).name if signals.received
                else "Ctrl-C" if signals.interrupted else "preemption notice")
        log.warning("%s: saved a checkpoint at step %d (epoch %d, step %d of %d) in %s; rerun the same "
                    "command to resume from it", name, step, progress["epoch"] + (progress["step_in_epoch"] > 0),
                    progress["step_in_epoch"] or steps_per_epoch, steps_per_epoch, ckpt.directory)
        raise Preempted(step)

    with PreemptionSignals() as signals:
        while progress["epoch"] < config.num_epochs and not progress["stop"]:
            epoch = progress["epoch"]
            start = progress["step_in_epoch"]
            t0 = time.perf_counter()
            timed_images, timed_from = 0.0, t0
            preempted = False
            for i, batch in enumerate(parallel.prefetch_to_device(source.epoch(epoch, start), 2), start=start):
                rstate, metrics = step_fn(rstate, batch, rng)
                step = epoch * steps_per_epoch + i + 1
                if not compiled_once:  # images/s leaves out compilation: time from the first step's end
                    jax.block_until_ready(metrics)
                    compiled_once, timed_from, timed_images = True, time.perf_counter(), 0.0
                else:
                    timed_images += float(batch["label"].size) * jax.process_count()
                window_end = (i + 1) % log_every == 0  # the same on every process
                windows.add(step, metrics, close=window_end)
                flush_windows(False)
                progress["step_in_epoch"] = i + 1
                preempted = signals.requested(step)
                if i + 1 == steps_per_epoch:
                    break  # the epoch-end checkpoint follows validation
                due = bool(every_steps) and step - last_save_step >= every_steps
                if every_seconds and window_end and not due:  # wall clocks differ: follow any process
                    due = parallel.any_process(time.monotonic() - last_save_time >= every_seconds)
                if due or preempted:
                    flush_windows(True)
                    save(step)
                if preempted:
                    stop_for_preemption(step)
            flush_windows(True)
            train_time = time.perf_counter() - timed_from
            val_loss, val_acc = validate(rstate)
            end_step = (epoch + 1) * steps_per_epoch
            check_finite(val_loss, "validation loss", end_step, steps_per_epoch, ckpt)
            lr_used = state_lib.learning_rate_at(config, steps_per_epoch, end_step - 1, progress["lr_scale"])
            Plateau.update(progress, val_loss, config)
            totals = progress["totals"]
            progress.update(epoch=epoch + 1, step_in_epoch=0,
                            totals={"loss_sum": 0.0, "correct": 0.0, "count": 0.0})
            rstate = rstate.replace(lr_scale=parallel.replicate(np.float32(progress["lr_scale"])))
            if progress["improved"]:
                best = model_of(parallel.checkpoint_state(rstate, save_from))
            epoch_times.append(time.perf_counter() - t0)
            remaining = 0 if progress["stop"] else config.num_epochs - progress["epoch"]
            eta = float(np.mean(epoch_times)) * remaining
            record = dict(kind="epoch", epoch=progress["epoch"], step=end_step,
                          loss=totals["loss_sum"] / max(totals["count"], 1),
                          accuracy=totals["correct"] / max(totals["count"], 1),
                          val_loss=val_loss, val_accuracy=val_acc, learning_rate=lr_used,
                          images_per_sec=timed_images / train_time if timed_images and train_time > 0 else None,
                          epoch_seconds=epoch_times[-1], **({"feature_cache": True} if tag == "cached" else {}))
            writers.write(**record)
            save(end_step)
            ips = record["images_per_sec"]
            log.info("epoch %d/%d  loss %.4f acc %.4f | val_loss %.4f val_acc %.4f%s | lr %.2e | %s | ETA %s%s",
                     progress["epoch"], config.num_epochs, record["loss"], record["accuracy"], val_loss, val_acc,
                     " *" if progress["improved"] else "", lr_used,
                     f"{ips:.0f} img/s" if ips else "img/s n/a", format_duration(eta),
                     " (cached features)" if tag == "cached" else "")
            if progress["stop"]:
                log.info("early stopping: no val_loss improvement for %d epochs (best epoch %d)",
                         progress["bad_epochs"], progress["best_epoch"] + 1)
            if preempted and progress["epoch"] < config.num_epochs and not progress["stop"]:
                stop_for_preemption(end_step)
    ckpt.wait()
    if progress["best_epoch"] >= 0:
        log.info("restored best checkpoint (epoch %d, val_loss %.4f)", progress["best_epoch"] + 1,
                 progress["best_val_loss"])
    return best, progress
