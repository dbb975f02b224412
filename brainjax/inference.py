"""Restore a trained model for evaluation and prediction: params and batch_stats only.

The optimizer state is never read, so a model trained with any optimizer or trainable
set can be evaluated or used for prediction, and no pretrained weight file is needed
(the checkpoint holds every parameter).

The model is built from the run's own <workdir>/config.json, not from the command line:
several model fields have no parameters (`model.standardize`, its percentiles,
`image_size`, `base_batchnorm_train`), so a flag that differs at inference would change
the model silently while the checkpoint still restores. Command-line overrides of the
evaluation (`eval.*`) and of data paths apply; one that changes the model is an error.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from brainjax import checkpoint, files, models, steps
from brainjax import abstention, schema
from brainjax.errors import UserError
from brainjax.evaluators import ood as ood_lib

log = logging.getLogger("brainjax")

RUN_CONFIG_FILE = "config.json"
# Fields that build the model: they must be the run's. model.weights_dir is only where
# pretrained weights were looked up (a location, not the model).
MODEL_FIELDS = ("model", "image_size")
LOCATION_FIELDS = ("model.weights_dir",)


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run wrote to <workdir>/config.json."""
    path = os.path.join(workdir, RUN_CONFIG_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{os.path.abspath(workdir)} holds no {RUN_CONFIG_FILE}: not a brainjax run directory "
                        "(train first: python launch.py --workdir=... --config=...)")
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    except (OSError, ValueError) as err:
        raise UserError(f"{path} could not be read as the run's config ({type(err).__name__}: {err}); restore it "
                        "from a backup or pass the training flags to a new run") from None


def _plain(value: Any) -> Any:
    """JSON-comparable form (tuples -> lists, ConfigDicts -> dicts)."""
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    return json.loads(json.dumps(value, default=str))


def _lookup(tree: dict, path: str) -> tuple[bool, Any]:
    node: Any = tree
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def _assign(tree: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def is_model_field(path: str) -> bool:
    """True for a config path that builds the model (model.* and image_size)."""
    return path.split(".")[0] in MODEL_FIELDS and path not in LOCATION_FIELDS


def missing_fields(run: dict, flags: dict, prefix: str = "") -> list[str]:
    """Dotted paths the command-line config has and the run's config.json lacks (fields
    added to brainjax after the run was trained)."""
    out = []
    for key, value in flags.items():
        path = prefix + key
        if key not in run:
            out.append(path)
        elif isinstance(value, dict) and isinstance(run[key], dict):
            out += missing_fields(run[key], value, path + ".")
    return out


def fill_missing(run: dict, flags: dict, path: str) -> dict:
    """The run's config with the fields it lacks taken from the command-line config (whose
    config file owns the defaults), each named in a warning. A missing model field is a
    UserError: the run's model was built without it, and the default may not be what it
    trained with."""
    missing = missing_fields(run, flags)
    model = [m for m in missing if is_model_field(m)]
    if model:
        raise UserError(f"{path} lacks the model field(s) {model} (a run from an older brainjax): the model it "
                        "trained cannot be rebuilt with certainty; train it again with this version")
    for key in missing:
        _assign(run, key, _lookup(flags, key)[1])
    if missing:
        log.warning("%s lacks %s (fields newer than the run): using the command-line config's values", path,
                    ", ".join(missing))
    return run


def inference_config(flag_config: ml_collections.ConfigDict, workdir: str,
                     overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The config to evaluate / predict with: the run's config.json, with the command
    line's `--config.<path>` overrides (`overrides` lists the paths) applied, except
    that an override which changes a model field is a UserError naming it. A workdir
    without config.json (runs older than it) falls back to the flags, with a warning."""
    path = os.path.join(workdir, RUN_CONFIG_FILE)
    if not os.path.isfile(path):
        log.warning("%s has no %s (a run older than it): building the model from the command-line config; "
                    "it must match the training flags exactly", os.path.abspath(workdir), RUN_CONFIG_FILE)
        return flag_config
    flags = _plain(flag_config)
    run = fill_missing(_plain(load_run_config(workdir)), flags, path)
    for key in overrides:
        found, value = _lookup(flags, key)
        if not found:
            continue
        if is_model_field(key):
            had, trained = _lookup(run, key)
            if not had or value != trained:
                raise UserError(
                    f"--config.{key}={value!r} differs from the run's {key}="
                    f"{trained if had else '(absent)'!r} ({path}): evaluate, predict and export build the model "
                    "the run trained. Drop the flag, or train a new run with it.")
            continue
        _assign(run, key, value)
    return ml_collections.ConfigDict(run)


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
    best = jax.device_get(restored[0])
    return model, steps.model_variables(best["params"], best["batch_stats"])


def class_names(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """The run's class names, in label order: the newest checkpoint's run record (the
    authority on what was trained), else config.json's `class_names` (written from the
    dataset's metadata at training), else report.json's (runs older than both)."""
    newest = checkpoint.newest_meta(workdir)
    if newest is not None and newest[1].get("run", {}).get("class_names"):
        return [str(n) for n in newest[1]["run"]["class_names"]]
    names = config.get("class_names")
    if names:
        return [str(n) for n in names]
    path = os.path.join(workdir, "report.json")
    if os.path.isfile(path):
        names = files.read_json(path, "the run's report").get("class_names")
        if names:
            return [str(n) for n in names]
    raise UserError(f"{os.path.abspath(workdir)}: neither config.json nor report.json names the classes (a run older "
                    f"than both); run python launch.py --workdir={workdir} --mode=evaluate --config=... once to "
                    "write report.json")


OUTPUT_NAMES = ("probabilities", "quality", "ood_score")


def serving_fn(model: Any, variables: dict, temperature: float = 1.0, ood: Mapping | None = None
               ) -> Callable[[jax.Array], dict]:
    """uint8 [N, H, W, 1] -> {"probabilities": softmax(logits / temperature) [N, K],
    "quality": the quality head's scan-quality estimate [N] (only with a quality head),
    "ood_score": the out-of-distribution score [N] (only with `ood`, see `load_ood`;
    higher = further from the training data)}.

    This one function is what --mode=predict prints and what `brainjax.export`
    serialises (weights and OOD statistics as constants), so the exported model is the
    evaluated one."""
    has_quality = model.quality_head is not None
    if ood is not None and ood["method"] in ood_lib.VIEWS:
        means, precision = (jnp.asarray(ood[k], jnp.float32) for k in ("means", "precision"))

    def serve(images: jax.Array) -> dict:
        x = steps.to_float_images(images)
        out = {}
        result, state = model.apply(variables, x, train=False, with_quality=has_quality, mutable=["intermediates"])
        logits, quality_logits = result if has_quality else (result, None)
        if has_quality:
            out["quality"] = models.quality_score(quality_logits).astype(jnp.float32)
        out["probabilities"] = jax.nn.softmax(logits.astype(jnp.float32) / jnp.float32(temperature), axis=-1)
        if ood is not None:
            method = ood["method"]
            if method in ood_lib.VIEWS:
                score = ood_lib.mahalanobis_score(state["intermediates"]["pooled"][-1], means, precision,
                                                  ood_lib.VIEWS[method] == "l2")
            elif method == "energy":
                score = ood_lib.energy(logits, temperature)
            else:
                score = ood_lib.max_prob(logits, temperature)
            out["ood_score"] = score.astype(jnp.float32)
        return out

    return serve


def load_ood(workdir: str, calibration: Mapping | None) -> dict | None:
    """The OOD rule fitted at evaluation: {"method", "threshold", "means", "precision"}
    from calibration.json's "ood" and ood_stats.npz; None when the run has none."""
    if not calibration or "ood" not in calibration:
        return None
    entry = dict(calibration["ood"])
    path = os.path.join(workdir, entry.get("stats_file", "ood_stats.npz"))
    if entry["method"] in ood_lib.VIEWS:
        if not os.path.isfile(path):
            raise UserError(f"{path} is missing but calibration.json has a Mahalanobis OOD threshold; rerun "
                            "--mode=evaluate to write both")
        with np.load(path) as f:
            means, precision, _ = ood_lib.gaussian_for({k: f[k] for k in f.files}, entry["method"])
        entry.update(means=means, precision=precision)
    return entry


is_out_of_distribution = abstention.is_out_of_distribution


def abstain_decisions(probabilities: np.ndarray, quality: np.ndarray | None, calibration: dict,
                      ood_score: np.ndarray | None = None) -> np.ndarray:
    """True where calibration.json's abstention rule says not to rely on the prediction:
    its sidecar entry applied (`brainjax.abstention`, the one implementation)."""
    return abstention.decisions(abstention.sidecar_entry(calibration), probabilities, quality, ood_score)


CALIBRATION_FILE = schema.CALIBRATION_FILE
load_calibration = schema.read_calibration  # <workdir>/calibration.json or None (brainjax/schema.py)
