"""Modes behind launch.py, with user errors turned into one clear line and exit code 1."""

from __future__ import annotations

import logging
import sys
from typing import Sequence

import jax
import ml_collections
import numpy as np

from brainjax import evaluators, inference, loop, parallel, report, steps, train
from brainjax.errors import UserError

log = logging.getLogger("brainjax")


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Re-evaluates the best checkpoint of `workdir` on the test split (every process
    takes its share; process 0 writes report.json)."""
    pipeline = train.input_pipeline(config)
    model, variables = inference.restore_for_inference(config, workdir, pipeline.num_classes)
    eval_fns = evaluators.make_eval_fns(model, tuple(config.eval.corruptions),
                                        bool(config.eval.get("seed_protocol_split")))
    eval_rng = jax.random.split(jax.random.key(config.seed), 3)[2]
    result = evaluators.evaluate(config, eval_fns, parallel.replicate(variables), pipeline, eval_rng)
    report.write_report(result, workdir)
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


def predict_files(config: ml_collections.ConfigDict, workdir: str, paths: Sequence[str]) -> int:
    """Prints class probabilities per file; unreadable files get an error line. Returns
    the number of files that could not be predicted."""
    import brainjax.data

    if not paths:
        raise UserError("--mode=predict needs --images=a.jpg,b.png")
    class_names = list(brainjax.data.CLASS_NAMES)
    model, variables = inference.restore_for_inference(config, workdir, len(class_names))
    images, good, failures = _load_images(paths, config.image_size)
    if images:
        batch = steps.to_float_images(np.stack(images))
        probs = np.asarray(jax.nn.softmax(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, batch)))
        for path, p in zip(good, probs):
            ranked = "  ".join(f"{class_names[i]} {p[i]:.3f}" for i in np.argsort(-p))
            print(f"{path}: {class_names[int(p.argmax())]}  ({ranked})")
    return failures


def gallery_files(config: ml_collections.ConfigDict, workdir: str, paths: Sequence[str]) -> int:
    """Writes <workdir>/gallery[_N].png: every corruption x severity on each image."""
    import os

    if not paths:
        raise UserError("--mode=gallery needs --images=x.jpg")
    os.makedirs(workdir, exist_ok=True)
    images, good, failures = _load_images(paths, config.image_size)
    for i, (path, image) in enumerate(zip(good, images)):
        out = os.path.join(workdir, "gallery.png" if i == 0 else f"gallery_{i}.png")
        report.gallery(image.astype(np.float32) / 255.0, out)
        print(f"{path}: wrote {out}")
    return failures


def main(config: ml_collections.ConfigDict, workdir: str, mode: str, images: Sequence[str] = ()) -> int:
    """Runs one mode; returns the process exit code (0 also after a clean preemption)."""
    try:
        if mode == "train":
            train.train_and_evaluate(config, workdir)
        elif mode == "evaluate":
            evaluate_workdir(config, workdir)
        elif mode == "predict":
            return 1 if predict_files(config, workdir, images) else 0
        elif mode == "gallery":
            return 1 if gallery_files(config, workdir, images) else 0
        else:
            raise UserError(f"unknown mode {mode!r}")
    except loop.Preempted:
        return 0
    except (UserError, FloatingPointError, FileNotFoundError) as err:
        print(f"brainjax: error: {err}", file=sys.stderr)
        return 1
    return 0
