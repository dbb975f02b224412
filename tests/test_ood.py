"""Out-of-distribution scores (brainjax/evaluators/ood.py): the Gaussian statistics are the
exact statistics of the whole training split, whatever the batching and padding; the
threshold keeps what it says; a bad eval.ood_dirs stops the run before training."""

import os

import jax
import numpy as np
import pytest

from brainjax import models, parallel, steps
from brainjax.errors import UserError
from brainjax.evaluators import ood


def _pipeline(config):
    from brainjax.data.pipeline import InputPipeline

    return InputPipeline(config, num_local_devices=jax.local_device_count())


def test_gaussian_statistics_equal_numpy_over_the_whole_training_split(smoke_config):
    """Means, counts and the shrunk precision from the pmapped two-pass sums (8 devices;
    eval batches of 40 leave a padded last batch) against float64 numpy on every training
    example's features, computed in one unsharded pass."""
    config = smoke_config
    config.eval_batch_size = 40
    pipeline = _pipeline(config)
    model = models.create_model(config.model, pipeline.num_classes)
    variables = {"params": model.init(jax.random.key(1), np.zeros((1, 32, 32, 1), np.float32), train=False)["params"]}
    fns = ood.make_ood_fns(model, pipeline.num_classes)
    stats = ood.fit_gaussian(fns.moments, parallel.replicate(variables),
                             lambda: pipeline.eval_batches(config.train_split), pipeline.num_classes,
                             fns.dim_of(variables), shrinkage=0.1)

    images, labels = [], []
    for batch in pipeline.eval_batches(config.train_split):
        keep = batch["mask"].reshape(-1) > 0
        images.append(batch["image"].reshape(-1, *batch["image"].shape[2:])[keep])
        labels.append(batch["label"].reshape(-1)[keep])
    images, labels = np.concatenate(images), np.concatenate(labels)
    assert len(labels) == pipeline.num_examples(config.train_split)
    _, pooled = ood.logits_and_pooled(model, variables, steps.to_float_images(images))
    raw = np.asarray(pooled, np.float64)
    np.testing.assert_array_equal(stats["counts"], np.bincount(labels, minlength=4))
    for f, suffix in ((raw, ""), (raw / np.linalg.norm(raw, axis=1, keepdims=True), "_l2")):
        means = np.stack([f[labels == c].mean(0) for c in range(4)])
        centred = f - means[labels]
        cov = centred.T @ centred / len(f)
        shrunk = 0.9 * cov + 0.1 * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
        np.testing.assert_allclose(stats["means" + suffix], means, rtol=1e-5, atol=1e-6 * np.abs(means).max())
        # The features themselves differ at float32 level between the two computations
        # (XLA picks other convolution kernels for a batch of 5 per device and for all
        # 720 at once: ~1e-6 relative). A covariance entry is a sum of products of
        # centred features, so that error reaches ~1e-5 of the largest entry; entries
        # near zero carry it whole (measured 2026-12-02: 4.3e-5 of the largest, on a
        # 2-core x86 machine). Hence atol = 2e-4 of the largest entry; a wrong mask,
        # count or mean moves entries by far more (the means are checked at 1e-5 above).
        np.testing.assert_allclose(np.linalg.inv(stats["precision" + suffix]), shrunk, rtol=1e-4,
                                   atol=2e-4 * np.abs(shrunk).max())


def test_mahalanobis_is_the_distance_to_the_nearest_class_mean():
    """Against a per-example loop: the min over classes of (f - mu)^T P (f - mu), and 0
    at a class mean."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    precision = a @ a.T + np.eye(6)
    means = rng.normal(size=(3, 6))
    f = np.concatenate([rng.normal(size=(5, 6)), means[1:2]])
    got = np.asarray(ood.mahalanobis(f.astype(np.float32), means.astype(np.float32), precision.astype(np.float32)))
    want = [min((x - m) @ precision @ (x - m) for m in means) for x in f]
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert abs(got[-1]) < 1e-4


def test_threshold_and_separation_on_known_scores():
    in_scores = np.arange(100, dtype=np.float64)  # validation: 0..99
    t = ood.fit_threshold(in_scores, 0.95)
    assert np.mean(in_scores <= t) >= 0.95 and np.mean(in_scores <= t - 1) < 0.95
    sep = ood.separation(in_scores, np.array([50.0, 200.0, 300.0, 400.0]))
    assert sep["fpr_at_95_tpr"] == 0.25  # only 50 is accepted at 95% TPR
    assert sep["auroc"] == pytest.approx((0.5 + 3 * 1.0) / 4, abs=0.01)  # 50 beats half of validation
    with pytest.raises(UserError, match="ood_keep"):
        ood.fit_threshold(in_scores, 1.5)


def test_bad_ood_dir_stops_before_training(smoke_config, tmp_path):
    from brainjax import train

    smoke_config.eval.ood_dirs = ("/no/such/folder",)
    workdir = tmp_path / "run"
    with pytest.raises(UserError, match="eval.ood_dirs: /no/such/folder is not a folder"):
        train.train_and_evaluate(smoke_config, str(workdir))
    assert not os.path.exists(workdir / "checkpoints") or not os.listdir(workdir / "checkpoints")


@pytest.mark.parametrize("field,value,expected", [
    ("ood_method", "knn", "eval.ood_method must be one of"),
    ("abstain_rule", "oodd", "eval.abstain_rule must be one of"),
    ("ood_keep", 0.0, "eval.ood_keep must be in"),
])
def test_bad_ood_settings_are_config_errors(smoke_config, field, value, expected):
    """The same check train_and_evaluate runs before its first step (above)."""
    from brainjax import evaluators

    setattr(smoke_config.eval, field, value)
    model = models.create_model(smoke_config.model, 4)
    with pytest.raises(UserError, match=expected):
        evaluators.check_config(smoke_config, model, {})


def test_empty_ood_folder_and_ood_rule_without_a_score(smoke_config, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    smoke_config.eval.ood_dirs = (str(empty),)
    with pytest.raises(UserError, match="holds no image files"):
        ood.check_config(smoke_config)
    from brainjax.evaluators import calibration

    with pytest.raises(UserError, match="needs an OOD score"):
        calibration.check_abstain_rule("ood_max_prob", has_quality=False, has_ood=False)
