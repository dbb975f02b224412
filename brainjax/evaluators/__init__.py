"""Evaluators: what a model scores on a split. They never import training.

  metrics     classification metrics, bootstrap CIs, corruption summaries (host numpy)
  predict     compiled eval steps and whole-split predictions gathered over processes
  robustness  the clean + corruption x severity grid, the seed protocol, the test report
  calibration temperature scaling, ECE/NLL/Brier, risk-coverage and abstention thresholds
  adapt       test-time BatchNorm adaptation (AdaBN) to a split's own unlabelled images
  ood         out-of-distribution scores (Mahalanobis on pooled features, energy), thresholds
"""

from brainjax.evaluators.metrics import (bootstrap_ci, classification_metrics, loss_and_accuracy,
                                         summarize)
from brainjax.evaluators.predict import make_eval_fns, predict_outputs, predict_split, real_examples
from brainjax.evaluators import calibration, ood
from brainjax.evaluators.ood import ood_fns_from_config
from brainjax.evaluators.adapt import adapt_on_images, adapter_from_config, make_batchnorm_adapter, report_dir
from brainjax.evaluators.robustness import abstain_score, check_config, evaluate, evaluate_split, load_reference, robustness_grid, seed_protocol

__all__ = ["ood", "ood_fns_from_config", "abstain_score", "check_config", "adapt_on_images", "adapter_from_config", "make_batchnorm_adapter", "report_dir", "bootstrap_ci", "calibration", "classification_metrics", "evaluate", "evaluate_split", "load_reference",
           "loss_and_accuracy", "make_eval_fns", "predict_outputs", "predict_split", "real_examples", "robustness_grid",
           "seed_protocol", "summarize"]
