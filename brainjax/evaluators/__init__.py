"""Evaluators: what a model scores on a split. They never import training.

  metrics     classification metrics, bootstrap CIs, corruption summaries (host numpy)
  predict     compiled eval steps and whole-split predictions gathered over processes
  robustness  the clean + corruption x severity grid, the seed protocol, the test report
"""

from brainjax.evaluators.metrics import (bootstrap_ci, classification_metrics, loss_and_accuracy,
                                         summarize)
from brainjax.evaluators.predict import make_eval_fns, predict_split, real_examples
from brainjax.evaluators.robustness import evaluate, evaluate_split, load_reference, robustness_grid, seed_protocol

__all__ = ["bootstrap_ci", "classification_metrics", "evaluate", "evaluate_split", "load_reference",
           "loss_and_accuracy", "make_eval_fns", "predict_split", "real_examples", "robustness_grid",
           "seed_protocol", "summarize"]
