"""Restore a trained model for evaluation and prediction: params and batch_stats only.

The optimizer state is never read, so a model trained with any optimizer or trainable
set can be evaluated or used for prediction, and no pretrained weight file is needed
(the checkpoint holds every parameter).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections

from brainjax import checkpoint, models, steps
from brainjax.errors import UserError


def restore_for_inference(config: ml_collections.ConfigDict, workdir: str, num_classes: int) -> tuple[Any, dict]:
    """(model, host model variables) of the best epoch so far in `workdir`."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise UserError(f"no checkpoint in {os.path.abspath(workdir)}; train first "
                        f"(python launch.py --workdir={workdir} --config=...)")
    model = models.create_model(config.model, num_classes)
    template = models.init_variables(model, jax.random.key(0), (config.image_size, config.image_size, 1))
    template = {"params": template["params"], "batch_stats": template.get("batch_stats", {})}
    ckpt = checkpoint.Checkpoints(workdir)
    try:
        restored = ckpt.restore_best(template)
    finally:
        ckpt.close()
    if restored is None:
        raise UserError(f"no checkpoint in {os.path.abspath(workdir)}; train first "
                        f"(python launch.py --workdir={workdir} --config=...)")
    best, _ = restored
    return model, steps.model_variables(best["params"], best["batch_stats"])


CALIBRATION_FILE = "calibration.json"


def load_calibration(workdir: str) -> dict | None:
    """<workdir>/calibration.json (written with report.json), or None if there is none."""
    path = os.path.join(workdir, CALIBRATION_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
