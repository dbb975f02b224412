"""Modes behind launch.py, with user errors turned into one clear line and exit code 1."""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from typing import Sequence

import jax
import ml_collections
import numpy as np

from brainjax import evaluators, explain as explain_lib, files, inference, loop, parallel, preflight, report, steps, train
from brainjax.errors import UserError, missing_extra

log = logging.getLogger("brainjax")


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Re-evaluates the best checkpoint of `workdir` on the test split (every process
    takes its share; process 0 writes report.json, under adapted/ with
    eval.adapt_batchnorm), in the config's parallel mode."""
    preflight.check(config, workdir, "evaluate")
    with parallel.using(config.get("parallel", "pmap")):
        return _evaluate_workdir(config, workdir)


def _evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict:
    pipeline = train.input_pipeline(config)
    model, variables = inference.restore_for_inference(config, workdir, pipeline.num_classes)
    evaluators.check_config(config, model, variables.get("batch_stats", {}))
    eval_fns = evaluators.make_eval_fns(model, tuple(config.eval.corruptions),
                                        bool(config.eval.get("seed_protocol_split")))
    eval_rng = jax.random.split(jax.random.key(config.seed), 3)[2]
    adapt = evaluators.adapter_from_config(config, model, variables.get("batch_stats", {}))
    ood_fns = evaluators.ood_fns_from_config(config, model, pipeline.num_classes)
    result, ood_stats = evaluators.evaluate(config, eval_fns, parallel.replicate(variables), pipeline, eval_rng, adapt,
                                            ood_fns)
    report.write_report(result, evaluators.report_dir(config, workdir), ood_stats)
    return result


def _load_images(paths: Sequence[str], size: int) -> tuple[list, list, int]:
    """(uint8 images, their paths, number of failures); each unreadable file gets an
    ERROR line on stderr and the others are still loaded."""
    from brainjax.data.pipeline import load_image_file

    images, good, failures = [], [], 0
    for path in paths:
        try:
            images.append(load_image_file(path, size))
            good.append(path)
        except UserError as err:
            print(f"ERROR {err}", file=sys.stderr)
            failures += 1
    return images, good, failures


def predict_images(config: ml_collections.ConfigDict, workdir: str, paths: Sequence[str],
                   rule: str | None = None) -> dict:
    """What --mode=predict computes for the readable files among `paths`: paths,
    class_names, probabilities (temperature-scaled), quality (None without a quality
    head), abstain (None without calibration), failures (unreadable files, each with an
    ERROR line), and the model and variables used. The probabilities come from
    `inference.serving_fn`, the function `brainjax.export` serialises. `rule`: an
    abstention rule set on the command line, applied with the thresholds evaluation
    fitted for it (preflight refuses a rule without them)."""
    if not paths:
        raise UserError("--mode=predict needs --images=a.jpg,b.png")
    class_names = inference.class_names(config, workdir)
    model, variables = inference.restore_for_inference(config, workdir, len(class_names))
    cal = inference.load_calibration(workdir)
    if cal is None:
        log.warning("no calibration in %s (run --mode=evaluate): raw softmax, no abstention", workdir)
    elif rule is not None:
        cal = {**cal, "rule": rule}
    images, good, failures = _load_images(paths, config.image_size)
    out = dict(paths=good, class_names=class_names, failures=failures, model=model, probabilities=None,
               quality=None, abstain=None, images=None, ood_score=None, ood=None)
    if not images:
        out["variables"] = variables
        return out
    uint8 = np.stack(images)
    adapt = evaluators.adapter_from_config(config, model, variables.get("batch_stats", {}))
    if adapt is not None:  # a new site's scans: BatchNorm statistics from these files
        variables, info = evaluators.adapt_on_images(adapt, variables, uint8)
        log.info("adapted BatchNorm statistics to the %d files (%d passes)%s", len(uint8), info["passes"],
                 "; fewer than 32 images give noisy statistics" if len(uint8) < 32 else "")
    ood = inference.load_ood(workdir, cal)
    serve = jax.jit(inference.serving_fn(model, variables, cal["temperature"] if cal else 1.0, ood))
    result = served_in_batches(serve, uint8, int(config.eval_batch_size))
    probs = result["probabilities"]
    quality, ood_score = result.get("quality"), result.get("ood_score")
    abstain = inference.abstain_decisions(probs, quality, cal, ood_score) if cal is not None else None
    out.update(variables=variables, probabilities=probs, quality=quality, abstain=abstain, images=uint8,
               ood_score=ood_score, ood=None if ood is None else {k: ood[k] for k in ("method", "threshold")})
    return out


def served_in_batches(serve, images: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """`serve` over `images` in batches of `batch` (the last one padded, so one compiled
    shape serves every batch), outputs concatenated."""
    parts: dict[str, list] = {}
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        for key, value in jax.device_get(serve(padded)).items():
            parts.setdefault(key, []).append(np.asarray(value)[:len(chunk)])
    return {key: np.concatenate(values) for key, values in parts.items()}


def ood_text(pred: dict, i: int) -> str:
    return f"  ood={pred['ood_score'][i]:.4g}" if pred["ood_score"] is not None else ""


def abstain_text(pred: dict, i: int) -> str:
    """'  ABSTAIN <why>' where the fitted rule abstains, naming the reason: out of
    distribution (the OOD score is above its threshold) or low confidence / quality."""
    if pred["abstain"] is None or not pred["abstain"][i]:
        return ""
    ood = pred["ood"]
    if ood is not None and inference.is_out_of_distribution(pred["ood_score"][i], ood):
        return (f"  ABSTAIN out of distribution: {ood['method']} score {pred['ood_score'][i]:.4g} > threshold "
                f"{ood['threshold']:.4g} (unlike the training scans; do not rely on this prediction)")
    return "  ABSTAIN low quality: do not rely on this prediction"


def predict_files(config: ml_collections.ConfigDict, workdir: str, paths: Sequence[str], explain: bool = False,
                  overrides: Sequence[str] = ()) -> int:
    """Prints, per file: the predicted class, the temperature-scaled class probabilities,
    the scan-quality estimate (`quality=`, from the quality head; n/a without one) and
    `ABSTAIN` when the abstention rule fitted at evaluation says not to rely on it.
    explain: also writes <workdir>/explain/<name>.png (Grad-CAM overlay; names from the
    inputs' relative paths, `files.output_names`). Unreadable files get an error line.
    `overrides`: the --config paths set on the command line (applied, or refused by
    preflight). Returns the number of files that could not be predicted."""
    preflight.check(config, workdir, "predict", images=paths, overrides=overrides)
    outputs = explain_paths(workdir, paths) if explain else []
    preflight.check_outputs(outputs, paths)
    rule = config.eval.abstain_rule if "eval.abstain_rule" in overrides else None
    pred = predict_images(config, workdir, paths, rule=rule)
    if pred["probabilities"] is None:
        return pred["failures"]
    class_names, probs, quality, abstain = (pred[k] for k in ("class_names", "probabilities", "quality", "abstain"))
    for i, (path, p) in enumerate(zip(pred["paths"], probs)):
        ranked = "  ".join(f"{class_names[j]} {p[j]:.3f}" for j in np.argsort(-p))
        q = f"quality={quality[i]:.2f}" if quality is not None else "quality=n/a"
        print(f"{path}: {class_names[int(p.argmax())]}  ({ranked})  {q}{ood_text(pred, i)}"
              f"{abstain_text(pred, i)}")
    if explain:
        write_explanations(pred, dict(zip(paths, outputs)))
    return pred["failures"]


def explain_paths(workdir: str, paths: Sequence[str]) -> list[str]:
    """<workdir>/explain/<unique name per input>.png."""
    return [os.path.join(workdir, "explain", name) for name in files.output_names(paths)]


def write_explanations(pred: dict, outputs: dict[str, str]) -> None:
    """One Grad-CAM overlay per predicted file, at `outputs[path]`."""
    model, variables, class_names = pred["model"], pred["variables"], pred["class_names"]
    batch = steps.to_float_images(pred["images"])
    heatmaps = np.asarray(jax.jit(lambda v, x: explain_lib.grad_cam(model, v, x))(variables, batch))
    for path, image, heat, p in zip(pred["paths"], np.asarray(batch), heatmaps, pred["probabilities"]):
        report.save_overlay(image[..., 0], heat, outputs[path],
                            title=f"{os.path.basename(path)}: {class_names[int(p.argmax())]} {p.max():.2f}")
        print(f"{path}: wrote {outputs[path]}")


def gallery_files(config: ml_collections.ConfigDict, workdir: str, paths: Sequence[str]) -> int:
    """Writes <workdir>/gallery/<name>.png per image (names from the inputs' relative
    paths, never an input's own path): every corruption x severity on it."""
    preflight.check(config, workdir, "gallery", images=paths)
    outputs = [os.path.join(workdir, "gallery", name) for name in files.output_names(paths)]
    preflight.check_outputs(outputs, paths)
    images, good, failures = _load_images(paths, config.image_size)
    where = dict(zip(paths, outputs))
    for path, image in zip(good, images):
        report.gallery(image.astype(np.float32) / 255.0, where[path])
        print(f"{path}: wrote {where[path]}")
    return failures


def main(config: ml_collections.ConfigDict, workdir: str, mode: str, images: Sequence[str] = (),
         explain: bool = False, overrides: Sequence[str] = (), preempted_exit_code: int = 0,
         heartbeat_timeout_s: float = 100.0) -> int:
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
            return 1 if predict_files(config, workdir, images, explain, overrides) else 0
        elif mode == "gallery":
            return 1 if gallery_files(config, workdir, images) else 0
        else:
            raise UserError(f"unknown mode {mode!r}")
    except loop.Preempted:
        return preempted_exit_code
    except (UserError, FloatingPointError, FileNotFoundError) as err:
        return fail(err, heartbeat_timeout_s)
    except ImportError as err:
        if missing_extra(err) is None:
            raise
        what = "reads images through tf.data, as training did" if mode == "predict" else "needs it"
        return fail(UserError(f"--mode={mode} {what}: {missing_extra(err)}"), heartbeat_timeout_s)
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
