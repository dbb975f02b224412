"""Training runs: one config -> a batch source, a step and a validation function ->
`loop.fit` -> the test report.

`train_and_evaluate` is what `launch.py` runs. It is the only place that knows the two
kinds of run: images through the full model with on-device degradation (the default),
or cached backbone features through the head (`config.feature_cache=True`, frozen base,
fixed inputs). Both go through the one loop and the same final evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np

from brainjax import (evaluation, evaluators, feature_cache, files, loop, models, parallel, partition, preflight, run_record,
                      state, steps, writers)

log = logging.getLogger("brainjax")


def write_config(config: ml_collections.ConfigDict, workdir: str, class_names: list[str]) -> None:
    """<workdir>/config.json (process 0): the resolved config of the run, and the class
    names of its dataset in label order, from which evaluate, predict and export build
    the model. Written only after `preflight` passed (a refused resume leaves it as it was)."""
    files.make_dirs(workdir)
    if parallel.is_main_process():
        record = json.loads(config.to_json_best_effort())
        record["class_names"] = list(class_names)
        files.write_json(os.path.join(workdir, "config.json"), record)


def input_pipeline(config: ml_collections.ConfigDict) -> Any:
    """The tf.data pipeline of this process; the dataset is built by process 0 first."""
    from brainjax.data import pipeline  # TensorFlow only where data is read

    parallel.process_zero_first("prepare_dataset", lambda: pipeline.prepare_dataset(config))
    return pipeline.InputPipeline(config, num_local_devices=jax.local_device_count(),
                                  process_index=jax.process_index(), process_count=jax.process_count())


class ImageBatches:
    """`loop.BatchSource` over the training split of an `InputPipeline`."""

    def __init__(self, pipeline: Any, split: str, seed: int):
        self.pipeline, self.split, self.seed = pipeline, split, seed
        self.steps_per_epoch = pipeline.steps_per_epoch(split)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict]:
        return self.pipeline.train_epoch(self.split, epoch, self.seed, start_step=start)


def image_validation(eval_fn: Callable, pipeline: Any, split: str, rng: jax.Array) -> Callable:
    """validate(rstate) -> (loss, accuracy) of every example of `split`, all processes."""

    def validate(rstate: Any) -> tuple[float, float]:
        rvariables = steps.model_variables(rstate.params, rstate.batch_stats)
        logits, labels, _ = evaluators.predict_split(eval_fn, rvariables, pipeline.eval_batches(split), rng)
        return evaluators.loss_and_accuracy(logits, labels)

    return validate


def _split_arrays(pipeline: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Every example of `split` (uint8 images, labels), in order, from the cached pipeline."""
    parts = [evaluators.real_examples(batch, ("image", "label")) for batch in pipeline.eval_batches(split)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]).astype(np.int32)


def cached_run(config: ml_collections.ConfigDict, model: Any, host_state: Any, pipeline: Any):
    """(source, validate) of the feature-cache path: pooled base features of the training
    inputs (+ fixed degraded copies) and of the validation split, computed once."""
    t0 = time.perf_counter()
    variables = steps.model_variables(host_state.params, host_state.batch_stats)
    images, labels = _split_arrays(pipeline, config.train_split)
    if config.fixed_degraded_copy:
        images, labels = feature_cache.seed_protocol_inputs(images, labels, config.seed)
    val_images, val_labels = _split_arrays(pipeline, config.val_split)
    fb = int(config.eval_batch_size)
    feats = feature_cache.as_head_input(feature_cache.pooled_features(model, variables, images, fb))
    val_feats = feature_cache.as_head_input(feature_cache.pooled_features(model, variables, val_images, fb))
    log.info("feature cache: %d training inputs%s and %d validation images through the frozen base in %.1f s",
             len(labels), " (each image + one fixed degraded copy)" if config.fixed_degraded_copy else "",
             len(val_labels), time.perf_counter() - t0)
    source = feature_cache.CachedBatches(feats, labels, batch_size=int(config.batch_size), seed=config.seed,
                                         num_local_devices=jax.local_device_count())

    def validate(rstate: Any) -> tuple[float, float]:
        head = parallel.unreplicate(rstate.params["head"])
        return evaluators.loss_and_accuracy(feature_cache.head_logits(model.head, head, val_feats), val_labels)

    return source, validate


def quality_loss_weight(config: ml_collections.ConfigDict) -> float:
    """config.quality_loss_weight if the model has a quality head, else 0."""
    head = config.model.get("quality_head")
    return float(config.quality_loss_weight) if head and head.get("enabled") else 0.0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from `workdir` if it holds a checkpoint), then evaluates the best
    model on the test split, clean and degraded; writes report.json. Returns the report.
    Steps are compiled in the config's parallel mode (`config.parallel`)."""
    with parallel.using(config.parallel):
        return _train_and_evaluate(config, workdir)


@dataclasses.dataclass
class TrainingRun:
    """What `loop.fit` and the final evaluation need for one config, built once: the input
    pipeline (and its tf.data cache), the model, the initial host state, the compiled
    training step, its batch source and validation, and the rngs. benchmarks reuse one
    across several `loop.fit` calls on the same workdir (each resuming the last)."""
    pipeline: Any
    model: Any
    host_state: Any
    step_fn: Callable
    source: Any
    validate: Callable
    train_rng: jax.Array
    eval_rng: jax.Array
    eval_fns: dict
    tag: str
    record: dict = dataclasses.field(default_factory=dict)  # run_record.record: stored in every checkpoint


def training_run(config: ml_collections.ConfigDict, workdir: str) -> TrainingRun:
    """Checks the config against `workdir` (`preflight`: before the dataset build, and
    the resume record once the dataset is known), writes its config.json and builds the
    run (call inside `parallel.using(config.parallel)`)."""
    cached = bool(config.feature_cache)
    preflight.check(config, workdir, "train")  # everything checkable, before the dataset build
    pipeline = input_pipeline(config)
    model = models.create_model(config.model, pipeline.num_classes)
    init_rng, train_rng, eval_rng = jax.random.split(jax.random.key(config.seed), 3)
    if cached:
        n_train = pipeline.num_examples(config.train_split) * (2 if config.fixed_degraded_copy else 1)
        steps_per_epoch = max(n_train // config.batch_size, 1)
    else:
        steps_per_epoch = pipeline.steps_per_epoch(config.train_split)
    # the resume check's derived fields, then config.json: never before the check passed
    preflight.check_resume(config, workdir, pipeline.class_names, steps_per_epoch)
    write_config(config, workdir, pipeline.class_names)
    record = run_record.record(config, pipeline.class_names, steps_per_epoch)
    host_state, tx, label_tree = state.create_train_state(config, model, pipeline.num_classes, init_rng,
                                                          steps_per_epoch)
    trainable, frozen = partition.split(host_state.params, label_tree)
    log.info("model %s/%s: %s trainable, %s frozen params; %d local devices, %d processes; %d steps/epoch",
             config.model.backbone, config.model.head, f"{partition.count(trainable):,}",
             f"{partition.count(frozen):,}", jax.local_device_count(), jax.process_count(), steps_per_epoch)
    eval_fns = evaluators.make_eval_fns(model, tuple(config.eval.corruptions),
                                        bool(config.eval.seed_protocol_split))
    step_kwargs = dict(tx=tx, label_tree=label_tree, label_smoothing=config.optimizer.label_smoothing)
    if cached:
        feature_cache.check_config(config, label_tree, bool(host_state.batch_stats))
        source, validate = cached_run(config, model, host_state, pipeline)
        step = functools.partial(steps.train_step, model=feature_cache.HeadOnly(model.head), inputs="features",
                                 **step_kwargs)
    else:
        source = ImageBatches(pipeline, config.train_split, config.seed)
        validate = image_validation(eval_fns[None], pipeline, config.val_split, eval_rng)
        # In the pmapped step BatchNorm statistics span all devices of all processes (on
        # one device there is nothing to synchronise, and the plain statistics keep the
        # arithmetic of single-device runs unchanged); a base that trains no parameter
        # keeps its BatchNorm in inference mode.
        train_model = models.create_model(config.model, pipeline.num_classes,
                                          bn_axis_name=parallel.AXIS if jax.device_count() > 1 else None,
                                          frozen_base="backbone" not in trainable)
        augment_cfg = config.train_augment
        step = functools.partial(steps.train_step, model=train_model, degrade_cfg=config.train_degrade.to_dict(),
                                 augment_cfg=augment_cfg.to_dict() if augment_cfg else None,
                                 quality_loss_weight=quality_loss_weight(config), **step_kwargs)
    return TrainingRun(pipeline=pipeline, model=model, host_state=host_state,
                       step_fn=parallel.compiled_step(step, donate_state=True), source=source, validate=validate,
                       train_rng=train_rng, eval_rng=eval_rng, eval_fns=eval_fns, tag="cached" if cached else "",
                       record=record)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    run = training_run(config, workdir)
    pipeline, model, eval_fns, eval_rng = run.pipeline, run.model, run.eval_fns, run.eval_rng
    out = writers.default_writers(workdir)
    try:
        best, _ = loop.fit(config, workdir, state=run.host_state, step_fn=run.step_fn, source=run.source,
                           validate=run.validate, rng=run.train_rng, writers=out, tag=run.tag,
                           record=run.record)
    finally:
        out.close()
    result = evaluation.evaluate_and_report(config, model, best, pipeline, workdir, eval_fns, eval_rng)
    log.info("input: process %d of %d decoded %d examples (its share of every split read)", jax.process_index(),
             jax.process_count(), pipeline.examples_decoded())
    return result
