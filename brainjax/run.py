"""Modes behind launch.py, with user errors turned into one clear line and exit code 1."""

from __future__ import annotations

import logging
import sys
import time
import traceback
from typing import Sequence

import jax
import ml_collections

from brainjax import evaluation, evaluators, inference, loop, loso, parallel, prediction, preflight, train
from brainjax.errors import UserError, missing_extra

log = logging.getLogger("brainjax")


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Re-evaluates the best checkpoint of `workdir` on the test split (every process
    takes its share; process 0 writes report.json, under adapted/ with
    eval.adapt_batchnorm), in the config's parallel mode."""
    preflight.check(config, workdir, "evaluate")
    with parallel.using(config.parallel):
        return _evaluate_workdir(config, workdir)


def _evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict:
    pipeline = train.input_pipeline(config)
    model, variables = inference.restore_for_inference(config, workdir, pipeline.num_classes)
    evaluators.check_config(config, model, variables.get("batch_stats", {}))
    return evaluation.evaluate_and_report(config, model, variables, pipeline, workdir)


# --mode=predict and --mode=gallery live in brainjax/prediction.py.
predict_images = prediction.predict_images
predict_files = prediction.predict_files
gallery_files = prediction.gallery_files


def main(config: ml_collections.ConfigDict, workdir: str, mode: str, images: Sequence[str] = (),
         explain: bool = False, overrides: Sequence[str] = (), preempted_exit_code: int = 0,
         heartbeat_timeout_s: float = 100.0, predictions: str | None = None) -> int:
    """Runs one mode; returns the process exit code: `preempted_exit_code` after a clean
    preemption save (0 by default; a job controller can ask for another to tell
    "preempted, resume me" from "finished"), 1 after an error.
    `overrides`: the config paths set on the command line (`--config.<path>=...`);
    evaluate and predict build the model from the run's config.json and apply only
    those (inference.inference_config).
    With several processes, an error on any process ends all of them: see `fail`."""
    try:
        preflight.check_workdir(workdir, mode)
        if mode in ("evaluate", "predict"):
            config = inference.inference_config(config, workdir, overrides)
        if mode == "train":
            train.train_and_evaluate(config, workdir)
        elif mode == "evaluate":
            evaluate_workdir(config, workdir)
        elif mode == "predict":
            return 1 if predict_files(config, workdir, images, explain, overrides, predictions) else 0
        elif mode == "gallery":
            return 1 if gallery_files(config, workdir, images) else 0
        elif mode == "loso":
            loso.run_loso(config, workdir)
        else:
            raise UserError(f"unknown mode {mode!r}")
    except loop.Preempted:
        return preempted_exit_code
    except (UserError, FloatingPointError, FileNotFoundError) as err:
        return fail(err, heartbeat_timeout_s)
    except ImportError as err:
        if missing_extra(err) is None:
            raise
        return fail(UserError(f"--mode={mode} needs it: {missing_extra(err)}"), heartbeat_timeout_s)
    except Exception as err:  # noqa: BLE001
        if jax.process_count() == 1:
            raise  # a bug: the traceback is the useful report
        if not parallel.is_communication_failure(err):  # a lost peer is named by the watcher instead
            traceback.print_exc()
        return fail(err, heartbeat_timeout_s)
    return 0


def fail(err: BaseException, heartbeat_timeout_s: float = 100.0) -> int:
    """Prints one `brainjax: error:` line and returns exit code 1. With several
    processes the line names this process, and the error is posted to the others, which
    print it and exit too (parallel.watch_for_peer_failure). An error that is itself
    the loss of another process (a collective whose peer was killed) instead waits for
    the watcher (or JAX's coordination service) to name the lost process."""
    text = str(err).strip().splitlines()
    message = text[0] if isinstance(err, UserError) and text else (
        f"{type(err).__name__}: {text[0][:400]}" if text else type(err).__name__)
    if jax.process_count() == 1:
        print(f"brainjax: error: {message}", file=sys.stderr, flush=True)
        return 1
    me = jax.process_index()
    if parallel.is_communication_failure(err):
        # Not this process's own error: the watcher names the lost process within its
        # stale time (JAX's heartbeat timeout is the backstop); give it that long.
        log.warning("process %d: a collective with the other processes failed (%s); waiting for the lost process "
                    "to be named", me, message)
        time.sleep(heartbeat_timeout_s + 10)
        print(f"brainjax: error: another process was lost ({message}); process {me} stops too",
              file=sys.stderr, flush=True)
        return 1
    print(f"brainjax: error: process {me} failed: {message}", file=sys.stderr, flush=True)
    parallel.report_failure(message)
    return 1
