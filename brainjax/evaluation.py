"""The final evaluation of a trained model, the one call training and --mode=evaluate
share: every configured evaluator (`evaluators/common.py`) on the model's variables,
then report.json, calibration.json, ood_stats.npz (`report.write_report`) and each
evaluator's figures (its `plot`)."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import ml_collections

from brainjax import evaluators, parallel, report, steps


def eval_rng(config: ml_collections.ConfigDict) -> jax.Array:
    """The evaluation key: the third of the run's seed split (init, train, eval)."""
    return jax.random.split(jax.random.key(config.seed), 3)[2]


def evaluate_and_report(config: ml_collections.ConfigDict, model: Any, variables: Mapping, pipeline: Any,
                        workdir: str, eval_fns: Mapping | None = None, rng: jax.Array | None = None) -> dict:
    """Runs the evaluators on host `variables` ({params, batch_stats}) and writes the
    report into `workdir` (its adapted/ folder with eval.adapt_batchnorm). Returns the
    report."""
    if eval_fns is None:
        eval_fns = evaluators.make_eval_fns(model, tuple(config.eval.corruptions),
                                            bool(config.eval.seed_protocol_split))
    batch_stats = variables.get("batch_stats", {})
    rvariables = parallel.replicate(steps.model_variables(variables["params"], batch_stats))
    adapt = evaluators.adapter_from_config(config, model, batch_stats)
    ood_fns = evaluators.ood_fns_from_config(config, model, pipeline.num_classes)
    result, ood_stats = evaluators.evaluate(config, eval_fns, rvariables, pipeline,
                                            eval_rng(config) if rng is None else rng, adapt, ood_fns)
    outdir = evaluators.report_dir(config, workdir)
    report.write_report(result, outdir, ood_stats)
    if parallel.is_main_process():
        for name, evaluator in evaluators.common.from_config(config):  # an evaluator's own plot, if it has one
            section = result if name == evaluators.common.MAIN else result.get(name)
            if section is not None and hasattr(evaluator, "plot"):
                evaluator.plot(section, outdir)
    return result
