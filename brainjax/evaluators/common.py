"""Evaluators as plug-ins (the big_vision `evaluators/common.py` pattern).

`config.eval.evaluators` is an ordered tuple of module names under `brainjax/evaluators/`.
Each such module defines a class `Evaluator`, constructed with no arguments, with
  check(config)          raises the usual one-line UserError; every evaluator's check
                         runs before training (`check_all`, from preflight)
  run(context) -> dict   its section of report.json, under a key named by the module
                         (None: nothing to report for this config)
and optionally plot(section, outdir). The `robustness` section is the report's top level
(split, clean, degraded, summary, ...), so today's report keys keep their names.

A new evaluator is one file plus its name in the config. Evaluators never import
training; they read what they need from the `Context`: the config, the class names,
`predictions(split, corruption, severity)` (cached, so two evaluators asking for the same
split run the model once), `results` (the sections of the evaluators that ran earlier)
and `shared` (values an evaluator hands on that are not report sections, such as the
selective rules calibration fitted, for the evaluators after it).
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any, Callable, Mapping

import jax
import numpy as np

from brainjax import degrade
from brainjax.errors import UserError
from brainjax.evaluators.predict import predict_outputs

log = logging.getLogger("brainjax")

MAIN = "robustness"  # its section is the report's top level


def cell_rng(rng: jax.Array, corruptions: tuple, corruption: str | None, severity: int | None) -> jax.Array:
    """The key of one grid cell: the clean cell uses `rng`; a corruption's cells fold in
    its position in eval.corruptions and the severity (so a cell's draw does not depend on
    which evaluator asks for it first)."""
    if corruption is None:
        return rng
    return jax.random.fold_in(jax.random.fold_in(rng, corruptions.index(corruption) + 1), severity)


class Context:
    """What an evaluator may read (see the module docstring)."""

    def __init__(self, config: Any, eval_fns: Mapping, rvariables: Any, pipeline: Any, rng: jax.Array,
                 adapt: Callable | None = None, ood_fns: Any = None):
        self.config, self.eval_fns, self.rvariables, self.pipeline, self.rng = config, eval_fns, rvariables, pipeline, rng
        self.class_names = list(pipeline.class_names)
        self.adapt, self.ood_fns = adapt, ood_fns
        self.results: dict = {}
        self.shared: dict = {}
        self._predictions: dict = {}
        self._adapted: dict = {}

    def variables(self, split: str, adapted: bool = True) -> tuple[Any, dict | None]:
        """(replicated variables to score `split` with, report["adaptation"] or None): with
        eval.adapt_batchnorm, BatchNorm statistics re-estimated on the split's own images
        (transductive; its labels are never read), once per split."""
        if self.adapt is None or not adapted:
            return self.rvariables, None
        if split not in self._adapted:
            adapted_vars, info = self.adapt(self.rvariables, lambda: self.pipeline.eval_batches(split))
            log.info("adapted BatchNorm statistics to %s's images (%d passes, last change %.1e; labels not used)",
                     split, info["passes"], info["residual"])
            self._adapted[split] = (adapted_vars, {"method": "batchnorm", "on": split, **info, "labels_used": False})
        return self._adapted[split]

    def predictions(self, split: str, corruption: str | None = None, severity: int | None = None,
                    adapted: bool = True) -> dict[str, np.ndarray]:
        """{"labels", "probabilities", "logits", "label", "index"[, "quality"]} of every
        example of `split`, clean or under `corruption` at `severity`; cached."""
        key = (split, corruption, severity, adapted and self.adapt is not None)
        if key not in self._predictions:
            variables, _ = self.variables(split, adapted)
            level = degrade.level_for(corruption, severity) if corruption is not None else 0.0
            rng = cell_rng(self.rng, tuple(self.config.eval.corruptions), corruption, severity)
            out = predict_outputs(self.eval_fns[corruption], variables, self.pipeline.eval_batches(split), rng, level)
            logits = out["logits"].astype(np.float64)
            e = np.exp(logits - logits.max(-1, keepdims=True))
            self._predictions[key] = {**out, "labels": out["label"], "probabilities": e / e.sum(-1, keepdims=True)}
        return self._predictions[key]

    def grid(self, split: str) -> dict:
        """{None: clean, (corruption, severity): ...} predictions of `split` over the
        configured grid (what calibration and the quality summary read)."""
        out = {None: self.predictions(split)}
        for name in self.config.eval.corruptions:
            for severity in self.config.eval.severities:
                out[(name, severity)] = self.predictions(split, name, severity)
        return out


def names(config: Any) -> tuple[str, ...]:
    """config.eval.evaluators; one line when the config has no such field (a config file
    that does not build on configs/default.py, or a run from an older brainjax)."""
    if "evaluators" not in config.eval:
        raise UserError("config.eval.evaluators is missing: it names the evaluators that write report.json "
                        "(configs/default.py lists them); add it to your config")
    return tuple(config.eval.evaluators)


def load(name: str) -> Any:
    """`brainjax.evaluators.<name>.Evaluator()`; a UserError naming the entry otherwise."""
    folder = os.path.dirname(os.path.abspath(__file__))
    available = sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_"))
    if name not in available:
        raise UserError(f"config.eval.evaluators: no evaluator {name!r} (modules under brainjax/evaluators/: "
                        f"{', '.join(available)})")
    module = importlib.import_module(f"brainjax.evaluators.{name}")
    if not hasattr(module, "Evaluator"):
        raise UserError(f"config.eval.evaluators: brainjax/evaluators/{name}.py defines no Evaluator class")
    return module.Evaluator()


def from_config(config: Any) -> list[tuple[str, Any]]:
    """(name, Evaluator) of every entry of config.eval.evaluators, in order."""
    return [(name, load(name)) for name in names(config)]


def check_all(config: Any) -> None:
    """Every configured evaluator's check, before training."""
    for _, evaluator in from_config(config):
        evaluator.check(config)


def run_all(context: Context) -> dict:
    """The report: each evaluator's section in order (`robustness`'s at the top level)."""
    report: dict = {}
    for name, evaluator in from_config(context.config):
        section = evaluator.run(context)
        if section is None:
            continue
        context.results[name] = section
        if name == MAIN:
            report.update(section)
        else:
            report[name] = section
    return report
