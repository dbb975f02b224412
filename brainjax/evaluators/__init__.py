"""Evaluators: what a model scores on a split. They never import training.

Plug-ins (`common.py`: `config.eval.evaluators` names the modules, in order; each defines
an `Evaluator` with check(config) and run(context) -> its report section):
  robustness     the test split clean and under every corruption x severity (the report's top level)
  calibration    temperature scaling, ECE/NLL/Brier (report["calibration"])
  ood            out-of-distribution scores, thresholds, AUROC vs other sets (report["ood"])
  selective      abstention rules, risk-coverage (report["selective"])
  quality        the quality head's estimates per cell (report["quality"])
  other_splits   the robustness section of eval.extra_splits (report["other_splits"])
  seed_protocol  the seed project's protocol (report["seed_protocol"])
Libraries: metrics (classification metrics, bootstrap CIs), predict (compiled eval steps,
whole-split predictions gathered over processes), adapt (test-time BatchNorm adaptation).
"""

from brainjax.evaluators.metrics import (bootstrap_ci, classification_metrics, loss_and_accuracy,
                                         summarize)
from brainjax.evaluators.predict import make_eval_fns, predict_outputs, predict_split, real_examples
from brainjax.evaluators import calibration, common, ood
from brainjax.evaluators.ood import ood_fns_from_config
from brainjax.evaluators.adapt import adapt_on_images, adapter_from_config, make_batchnorm_adapter, report_dir
from brainjax.evaluators.calibration import abstain_score
from brainjax.evaluators.robustness import check_config, evaluate, evaluate_split, load_reference

__all__ = ["ood", "ood_fns_from_config", "abstain_score", "check_config", "adapt_on_images", "adapter_from_config",
           "make_batchnorm_adapter", "report_dir", "bootstrap_ci", "calibration", "classification_metrics", "common",
           "evaluate", "evaluate_split", "load_reference", "loss_and_accuracy", "make_eval_fns", "predict_outputs",
           "predict_split", "real_examples", "summarize"]
