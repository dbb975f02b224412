"""The one check before any work: everything that can be checked from the config, the
command line and the files already on disk, before the dataset is built, the first file
is written and the first step is taken. A mistake is one `UserError` line naming the flag,
field or file and what to do; nothing on disk has changed when it is raised.

`check(config, workdir, mode, ...)` runs, per mode:
  every mode  the workdir: a folder (or one that can be made), writable, and either new,
              empty or a brainjax run; the run directory is then `files.own`ed
  train       dataset fields and split names (train, val, test, extra, seed protocol),
              batch / shard divisibility, evaluation settings (corruptions, abstention
              rule, OOD folders, reference report), and, on resume, every field of the
              checkpoint's run record (`run_record`)
  evaluate    the run's checkpoint, dataset and split names, evaluation settings
  predict     --images, calibration.json, the command-line overrides predict applies
  gallery     --images and output names that collide with no input
"""

from __future__ import annotations

import os
import re
from typing import Any, Sequence

import jax

from brainjax import checkpoint, files, models, run_record
from brainjax.errors import UserError

RUN_CONFIG_FILE = "config.json"
# --config.<path> overrides --mode=predict applies (prefixes); every other one is refused.
PREDICT_OVERRIDES = ("eval.abstain_rule", "eval.adapt_batchnorm", "eval_batch_size", "parallel")


def is_run_dir(workdir: str) -> bool:
    """A folder brainjax trained in: its config.json (with class names) or checkpoints."""
    if checkpoint.has_steps(workdir):
        return True
    return files.json_with_keys("class_names", "model")(os.path.join(workdir, RUN_CONFIG_FILE))


def check_workdir(workdir: str | None, mode: str) -> None:
    """The workdir is a folder brainjax may write in (see the module docstring); owns it."""
    if not workdir:
        raise UserError("--workdir is required: the run's folder")
    path = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"--workdir={workdir} is a file, not a folder; give a new folder (or a brainjax run "
                        "directory to resume or use)")
    if mode in ("evaluate", "predict"):
        if not is_run_dir(path):
            raise UserError(f"--workdir={workdir} is not a brainjax run (no {RUN_CONFIG_FILE} or checkpoints); "
                            f"train first: brainjax --workdir={workdir} --config=...")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"--workdir={workdir}: {existing} is a file, so the folder cannot be made; choose another path")
    if mode == "loso" and os.path.isdir(path):
        strays = sorted(e for e in os.listdir(path) if not e.startswith(".") and not is_loso_entry(path, e))
        if strays:
            raise UserError(f"--workdir={workdir} holds files that are not a leave-one-source-out run "
                            f"({', '.join(strays[:3])}); give --mode=loso a new or empty folder")
        files.own(path)
    writes = mode in ("train", "gallery", "evaluate", "loso")  # predict writes only with --explain (checked then)
    if writes and not files.can_write_in(existing):
        raise UserError(f"--workdir={workdir}: {existing} is not writable; choose a folder you can write to")
    if os.path.isdir(path) and mode == "train" and not is_run_dir(path):
        entries = sorted(e for e in os.listdir(path) if not e.startswith("."))
        if entries:
            raise UserError(f"--workdir={workdir} holds files that are not a brainjax run ({', '.join(entries[:3])}"
                            f"{', ...' if len(entries) > 3 else ''}); train in a new or empty folder")
    if os.path.isdir(path) and (is_run_dir(path) or not os.listdir(path)):
        files.own(path)


def is_loso_entry(workdir: str, entry: str) -> bool:
    """What --mode=loso writes in its folder: holdout-<name>/ runs, loso.json, loso.md."""
    if entry in ("loso.json", "loso.md"):
        return True
    path = os.path.join(workdir, entry)
    return entry.startswith("holdout-") and os.path.isdir(path) and (is_run_dir(path) or not os.listdir(path))


def split_names(spec: str) -> list[str]:
    """The split names of a tfds split spec: 'train[:90%]+test' -> ['train', 'test']."""
    return [part.split("[")[0].strip() for part in str(spec).split("+") if part.strip()]


def configured_splits(config: Any, mode: str) -> dict[str, str]:
    """{field: split spec} of every split the mode reads."""
    out = {"test_split": config.test_split, "val_split": config.val_split}
    if mode == "train" or config.eval.ood_method or config.feature_cache:
        out["train_split"] = config.train_split
    for i, split in enumerate(config.eval.extra_splits or ()):
        out[f"eval.extra_splits[{i}]"] = split
    if config.eval.seed_protocol_split:
        out["eval.seed_protocol_split"] = config.eval.seed_protocol_split
    return out


def check_splits(builder: Any, config: Any, mode: str) -> None:
    """Every configured split names a split of the dataset: the built dataset's splits, or
    the builder's declared `SPLIT_NAMES` before it is built (a third-party builder that
    declares none is checked once built)."""
    if builder.is_prepared():
        known = sorted(builder.info.splits.keys())
    else:
        known = sorted(getattr(builder, "SPLIT_NAMES", ()) or ())
    if not known:
        return
    for field, spec in configured_splits(config, mode).items():
        if not re.fullmatch(r"[\w\-]+(\[[^\]]*\])?(\+[\w\-]+(\[[^\]]*\])?)*", str(spec).replace(" ", "")):
            raise UserError(f"config.{field}={spec!r} is not a split spec like 'train', 'train[:90%]' or "
                            "'train+test'")
        for name in split_names(spec):
            if name not in known:
                raise UserError(f"config.{field}={spec!r}: the dataset {config.dataset} has no split {name!r} "
                                f"(its splits: {', '.join(known)})")


def check_batches(config: Any) -> None:
    """The input layout the pipeline needs (`pipeline.check_layout`) on this run's devices."""
    from brainjax.data import pipeline

    pipeline.check_layout(config, jax.device_count(), jax.process_count())


def check_evaluation(config: Any, num_classes: int) -> None:
    """The evaluation settings a run needs after training (evaluators.check_config),
    with the model's variable shapes from `jax.eval_shape` (no compute)."""
    from brainjax import evaluators

    model = models.create_model(config.model, num_classes)
    size = int(config.image_size)
    shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), (size, size, 1)))
    evaluators.check_config(config, model, shapes.get("batch_stats", {}))


def saved_record(workdir: str) -> dict | None:
    """The run record of the newest checkpoint (its meta item), or, for checkpoints that
    carry none, the resume fields of the run's config.json; None without checkpoints."""
    if not checkpoint.has_steps(workdir):
        return None
    checkpoint.refuse_older_formats(workdir)
    newest = checkpoint.newest_meta(workdir)
    if newest is not None and "run" in newest[1]:
        return newest[1]["run"]
    path = os.path.join(workdir, RUN_CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    config = files.read_json(path, f"the record of what the checkpoints in {workdir} were trained with")
    record = run_record.of_config(config)
    if config.get("class_names"):
        record["class_names"] = list(config["class_names"])
    return record


def check_resume(config: Any, workdir: str, class_names: Sequence[str] | None = None,
                 steps_per_epoch: int | None = None) -> None:
    """Resuming into `workdir` with `config`: every recorded field that changes the saved
    state or the meaning of the step counter must be the run's (UserError naming them)."""
    saved = saved_record(workdir)
    if saved is None:
        return
    now = run_record.of_config(config)
    if class_names is not None:
        now["class_names"] = list(class_names)
    if steps_per_epoch is not None:
        now["steps_per_epoch"] = int(steps_per_epoch)
    diffs = run_record.differences(saved, run_record.plain(now))
    if diffs:
        raise UserError(f"{workdir} holds checkpoints of another run ({run_record.describe(diffs)}); resume with "
                        "the run's settings, or train in a new --workdir. Nothing in it was changed.")


def check_dataset(config: Any, mode: str) -> list[str]:
    """Dataset fields and split names, without building the dataset; returns its class
    names (from the builder's metadata)."""
    from brainjax.data import pipeline  # TensorFlow only where data is read

    builder = pipeline.checked_builder(config)
    check_splits(builder, config, mode)
    return list(builder.info.features["label"].names)


def check_training(config: Any, workdir: str) -> None:
    if config.fixed_degraded_copy and not config.feature_cache:
        raise UserError("config.fixed_degraded_copy=True (the seed's fixed degraded copies) is implemented for the "
                        "feature-cache path: set config.feature_cache=True (frozen base), or use "
                        "config.train_degrade for random per-step degradation instead")
    check_batches(config)
    class_names = check_dataset(config, "train")
    check_evaluation(config, len(class_names))
    check_resume(config, workdir, class_names)


def check_prediction(config: Any, workdir: str, images: Sequence[str], overrides: Sequence[str]) -> None:
    if not images:
        raise UserError("--mode=predict needs --images=a.png,b.dcm,folder/ (files or folders)")
    ignored = [k for k in overrides if not k.startswith(PREDICT_OVERRIDES) and not k.startswith(("model.",
                                                                                                   "image_size"))]
    if ignored:
        raise UserError(f"--config.{ignored[0]} has no effect on --mode=predict (it applies "
                        f"{', '.join('--config.' + p for p in PREDICT_OVERRIDES)}); drop it, or use it with "
                        "--mode=evaluate or training")
    if not checkpoint.has_steps(workdir):
        raise UserError(f"no checkpoint in {os.path.abspath(workdir)}; train first")
    calibration_file = os.path.join(workdir, "calibration.json")
    calibration = files.read_json(calibration_file, "the run's calibration") if os.path.isfile(calibration_file) else None
    if "eval.abstain_rule" in overrides:
        check_rule_override(config.eval.abstain_rule, calibration, calibration_file)


def check_rule_override(rule: str, calibration: dict | None, path: str) -> None:
    """--config.eval.abstain_rule at predict: applied with the thresholds evaluation
    fitted for that rule, or refused when there are none."""
    if calibration is None:
        raise UserError(f"--config.eval.abstain_rule={rule}: {path} does not exist, so no rule has a threshold; "
                        "run --mode=evaluate first")
    fitted = sorted(calibration.get("thresholds", {})) + (["ood", "ood_max_prob"] if "ood" in calibration else [])
    if rule not in fitted:
        raise UserError(f"--config.eval.abstain_rule={rule}: this run's evaluation fitted no threshold for it "
                        f"(fitted: {', '.join(sorted(set(fitted)))}); rerun --mode=evaluate "
                        f"--config.eval.abstain_rule={rule}")


def check_outputs(paths: Sequence[str], inputs: Sequence[str]) -> None:
    """Output files never replace an input or a file brainjax may not replace."""
    inputs_real = {os.path.realpath(p) for p in inputs}
    for path in paths:
        if os.path.realpath(path) in inputs_real:
            raise UserError(f"the output {path} would replace an input file; use another --workdir")
        files.check_replaceable(path, "the output")


def check(config: Any, workdir: str, mode: str, images: Sequence[str] = (), overrides: Sequence[str] = ()) -> None:
    """Everything checkable before any work, for `mode` (see the module docstring)."""
    check_workdir(workdir, mode)
    if mode == "train":
        check_training(config, workdir)
    elif mode == "evaluate":
        if not checkpoint.has_steps(workdir):
            raise UserError(f"no checkpoint in {os.path.abspath(workdir)}; train first")
        check_batches(config)
        class_names = check_dataset(config, "evaluate")
        check_evaluation(config, len(class_names))
    elif mode == "predict":
        check_prediction(config, workdir, images, overrides)
    elif mode == "gallery":
        if not images:
            raise UserError("--mode=gallery needs --images=x.png")
    else:
        raise UserError(f"unknown mode {mode!r}")
