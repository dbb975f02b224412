"""The scan-quality head: its targets are what `degrade.augment` applied, and it trains."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from brainjax import degrade, models, partition, steps
from brainjax import state as state_lib
from brainjax.data import phantom


def _images(n=24, size=32):
    x = np.stack([phantom.generate_slice(1, i, i % 4, size) for i in range(n)])
    return jnp.asarray(x, jnp.float32) / 255.0


@pytest.mark.parametrize("recipe", ["chain", "ordered", "one", pytest.param("augmix", marks=pytest.mark.slow)])
def test_quality_targets_match_what_augment_applied(recipe):
    """Severity 0 (all targets 0) <=> the image is unchanged; only the configured
    corruptions are named (what each target says is checked by
    test_each_target_measures_the_corruption_it_names)."""
    cfg = {"recipe": recipe, "prob": 0.5, "max_ops": 2, "gaussian_noise": (0.02, 0.2), "gaussian_blur": (0.5, 5.0),
           "contrast": (0.1, 0.6)}
    x = _images()
    keys = degrade.example_keys(jax.random.key(7), jnp.arange(x.shape[0]))
    out, targets = jax.jit(lambda x, k: degrade.augment_with_targets(x, k, cfg))(x, keys)
    targets = np.asarray(targets)
    assert targets.shape == (x.shape[0], len(degrade.NAMES))
    assert targets.min() >= 0.0 and targets.max() <= 1.0
    changed = np.abs(np.asarray(out) - np.asarray(x)).max(axis=(1, 2, 3)) > 0
    clean = targets.max(axis=1) == 0
    np.testing.assert_array_equal(clean, ~changed)
    assert 0 < clean.sum() < len(clean)  # prob 0.5: both kinds occur
    # Only the configured corruptions are ever named.
    unused = [i for i, nm in enumerate(degrade.NAMES) if nm not in cfg]
    assert targets[:, unused].max() == 0.0
    if recipe == "one":
        assert ((targets > 0).sum(axis=1) <= 1).all()


def _spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_each_target_measures_the_corruption_it_names():
    """With one corruption per image, the target names it and grows with what it did to
    the image: the residual of noise, the lost high frequencies of blur, the lost spread
    of contrast (targets shuffled between examples or between corruptions fail this)."""
    cfg = {"recipe": "one", "prob": 0.9, "gaussian_noise": (0.02, 0.3), "gaussian_blur": (0.5, 5.0),
           "contrast": (0.1, 0.8)}
    x = _images(n=96)
    keys = degrade.example_keys(jax.random.key(3), jnp.arange(x.shape[0]))
    out, targets = jax.jit(lambda x, k: degrade.augment_with_targets(x, k, cfg))(x, keys)
    x, out, targets = np.asarray(x)[..., 0], np.asarray(out)[..., 0], np.asarray(targets)
    high = lambda im: np.abs(np.diff(im, axis=-1)).mean(axis=(-2, -1))  # high-frequency content
    effect = {"gaussian_noise": (out - x).std(axis=(1, 2)),
              "gaussian_blur": 1 - high(out) / high(x),
              "contrast": 1 - out.std(axis=(1, 2)) / x.std(axis=(1, 2))}
    for name, measured in effect.items():
        only = (targets[:, degrade.NAMES.index(name)] > 0) & ((targets > 0).sum(axis=1) == 1)
        assert only.sum() >= 12, name
        rho = _spearman(targets[only, degrade.NAMES.index(name)], measured[only])
        assert rho > 0.8, (name, rho)


def test_quality_target_is_the_level_on_the_severity_scale():
    """A fixed level gives the target `strength(level)`: noise std 0.18 is severity 3 (0.6)."""
    cfg = {"recipe": "one", "prob": 1.0, "gaussian_noise": (0.18, 0.18)}
    x = _images(n=4)
    _, targets = degrade.augment_with_targets(x, degrade.example_keys(jax.random.key(0), jnp.arange(4)), cfg)
    np.testing.assert_allclose(np.asarray(targets[:, degrade.NAMES.index("gaussian_noise")]), 0.6, atol=1e-6)


def _config(weight):
    from configs import smoke

    c = smoke.get_config()
    c.model.quality_head = ml_collections.ConfigDict(dict(enabled=True, hidden=(16,)))
    c.quality_loss_weight = weight
    return c


def test_quality_head_gets_no_update_without_its_loss():
    c = _config(0.0)
    model = models.create_model(c.model, 4)
    host, tx, labels = state_lib.create_train_state(c, model, 4, jax.random.key(0), 10)
    assert "quality_head" in host.params
    cfg = {"recipe": "one", "prob": 1.0, "gaussian_noise": (0.05, 0.3)}
    step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, label_tree=labels, degrade_cfg=cfg,
                                     quality_loss_weight=0.0))
    batch = {"image": (np.asarray(_images(16)) * 255).astype(np.uint8), "label": np.arange(16) % 4}
    new, _ = step(host, batch, jax.random.key(1))
    before = traverse_util.flatten_dict(jax.device_get(host.params["quality_head"]))
    after = traverse_util.flatten_dict(jax.device_get(new.params["quality_head"]))
    assert max(float(np.abs(after[k] - before[k]).max()) for k in before) == 0.0  # no loss, no gradient


def test_frozen_base_pattern_still_trains_the_quality_head(caplog):
    """README's frozen-base example, trainable=('^head/',), with the quality head on: the
    head is made trainable (with a log line) and a step moves it; the base stays put."""
    import logging

    c = _config(1.0)
    c.trainable = ("^head/",)
    model = models.create_model(c.model, 4)
    caplog.set_level(logging.INFO, logger="brainjax")
    host, tx, labels = state_lib.create_train_state(c, model, 4, jax.random.key(0), 10)
    assert "'^quality_head/' added" in caplog.text
    flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(labels).items()}
    assert all(v == partition.TRAINABLE for k, v in flat.items() if k.startswith("quality_head/"))
    assert all(v == partition.FROZEN for k, v in flat.items() if k.startswith("backbone/"))
    cfg = {"recipe": "one", "prob": 1.0, "gaussian_noise": (0.05, 0.3)}
    step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, label_tree=labels, degrade_cfg=cfg,
                                     quality_loss_weight=1.0))
    batch = {"image": (np.asarray(_images(16)) * 255).astype(np.uint8), "label": np.arange(16) % 4}
    new, _ = step(host, batch, jax.random.key(1))
    moved = lambda part: max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                             for a, b in zip(jax.tree.leaves(host.params[part]), jax.tree.leaves(new.params[part])))
    assert moved("quality_head") > 1e-4 and moved("backbone") == 0.0
    # with the head named in the patterns nothing is added
    c.trainable = ("^head/", "^quality_head/")
    assert partition.with_head_trained(c.trainable, host.params, "quality_head") == (tuple(c.trainable), False)
