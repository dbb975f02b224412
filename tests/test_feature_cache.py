"""Feature caching trains the same head as the uncached frozen-base path."""

import functools

import jax
from conftest import restore_run
import numpy as np
import pytest
from flax import traverse_util

from brainjax import feature_cache, inference, models, steps, train
from brainjax import state as state_lib
from brainjax.data import phantom
from configs import smoke


def test_cached_head_training_matches_uncached_frozen_steps():
    config = smoke.get_config()
    config.model.tiny.widths = (8, 16, 32)
    config.model.head, config.model.head_hidden, config.model.dropout = "enhanced", (32,), 0.0
    config.trainable = ("^head/",)
    model = models.create_model(config.model, 4)
    labels = np.arange(48) % 4
    images = np.stack([phantom.generate_slice(3, i, int(l), 32) for i, l in enumerate(labels)])
    x, y = feature_cache.seed_protocol_inputs(images, labels)
    assert x.shape == (96, 32, 32, 1) and x.dtype == np.uint8
    assert np.abs(x[48:].astype(int) - x[:48].astype(int)).mean() > 1  # degraded copies differ

    state, tx, label_tree = state_lib.create_train_state(config, model, 4, jax.random.key(0), 10)
    variables = {"params": state.params}
    # cached: features once, then the engine's train step on the head alone
    feats = feature_cache.as_head_input(feature_cache.pooled_features(model, variables, x, batch=32))
    head_step = jax.jit(functools.partial(steps.train_step, model=feature_cache.HeadOnly(model.head), tx=tx,
                                          label_tree=label_tree, inputs="features"))
    # uncached: the engine's frozen train step on the images, same batches in the same order
    step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, label_tree=label_tree,
                                     degrade_cfg={"recipe": "none"}))
    s, c = state, state
    for idx in feature_cache.batch_order(len(y), 16, 3, seed=0):
        s, _ = step(s, {"image": x[idx], "label": y[idx].astype(np.int32)}, jax.random.key(0))
        c, _ = head_step(c, {"image": feats[idx], "label": y[idx].astype(np.int32)}, jax.random.key(0))
    uncached = jax.device_get(s.params["head"])
    cached = jax.device_get(c.params["head"])
    for k, v in traverse_util.flatten_dict(uncached).items():
        np.testing.assert_allclose(traverse_util.flatten_dict(cached)[k], v, rtol=2e-3, atol=2e-5, err_msg=str(k))
    # the frozen base is untouched and the optimizer states match
    for a, b in zip(jax.tree.leaves(jax.device_get(c.params["backbone"])), jax.tree.leaves(state.params["backbone"])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(jax.device_get(c.opt_state)), jax.tree.leaves(jax.device_get(s.opt_state))):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5)
    # and the resulting classifiers agree on every prediction
    apply = jax.jit(lambda v, im: model.apply(v, steps.to_float_images(im)))
    a = np.asarray(apply({"params": jax.device_get(c.params)}, x)).argmax(-1)
    b = np.asarray(apply({"params": s.params}, x)).argmax(-1)
    assert (a == b).mean() > 0.97


def _cached_config(smoke_config, tmp_path):
    c = smoke_config
    c.trainable = ("^head/",)
    c.train_degrade.recipe, c.train_degrade.flip_lr = "none", False
    c.feature_cache, c.fixed_degraded_copy = True, True
    c.num_epochs = 3
    c.eval.seed_protocol_split = c.val_split
    return c


def test_engine_feature_cache_run_checkpoints_and_resumes(smoke_config, tmp_path):
    import json

    c = _cached_config(smoke_config, tmp_path)
    workdir = str(tmp_path / "run")
    report = train.train_and_evaluate(c, workdir)
    assert report["clean"]["confusion_matrix"] and sum(map(sum, report["clean"]["confusion_matrix"])) == 120
    assert "seed_protocol" in report
    records = [json.loads(l) for l in open(f"{workdir}/metrics.jsonl")]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and all(e["feature_cache"] for e in epochs)
    # 720 training images + 720 fixed degraded copies, batch 32, drop remainder -> 45 steps per epoch
    assert epochs[-1]["step"] == 3 * (1440 // 32)
    again = train.train_and_evaluate(c, workdir)  # complete: evaluates the best checkpoint, no training
    assert again["clean"]["accuracy"] == report["clean"]["accuracy"]
    assert len(open(f"{workdir}/metrics.jsonl").readlines()) == len(records)
    # the checkpoint serves inference like any run's: the trained head, the frozen base
    model, variables = inference.restore_for_inference(c, workdir, 4)
    init = models.init_variables(model, jax.random.key(c.seed), (c.image_size, c.image_size, 1))
    for a, b in zip(jax.tree.leaves(variables["params"]["head"]), jax.tree.leaves(init["params"]["head"])):
        assert not np.array_equal(a, b)


# Slow tier (suite-time budget, issue 11): `pytest -m slow` runs it; the cached path's resume is the one
# loop's (tested through the image path in the default suite).
@pytest.mark.slow
def test_engine_feature_cache_resumes_like_the_image_path(smoke_config, tmp_path):
    """Interrupted after epoch 1 and rerun, the cached path ends with the parameters and
    optimizer state of an uninterrupted run (the one loop's resume)."""


    c = _cached_config(smoke_config, tmp_path)
    c.eval.corruptions, c.eval.seed_protocol_split = (), ""
    c.early_stopping.enabled = False
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train.train_and_evaluate(c, straight)
    first = c.copy_and_resolve_references()
    first.num_epochs = 1
    train.train_and_evaluate(first, resumed)
    train.train_and_evaluate(c, resumed)

    (sa, _, la), (sb, _, lb) = restore_run(straight, c), restore_run(resumed, c)
    assert la["epoch"] == lb["epoch"] == 3 and int(sa.step) == int(sb.step) == 3 * 45
    assert lb["lr_scale"] == la["lr_scale"]
    for a, b in zip(jax.tree.leaves((sa.params, sa.opt_state)), jax.tree.leaves((sb.params, sb.opt_state))):
        np.testing.assert_array_equal(a, b)


def test_engine_feature_cache_refuses_inexact_setups(smoke_config, tmp_path):
    import pytest

    from brainjax.errors import UserError

    c = _cached_config(smoke_config, tmp_path)
    c.trainable = (".*",)
    with pytest.raises(UserError, match="config.trainable"):
        train.train_and_evaluate(c, str(tmp_path / "a"))
    c = _cached_config(smoke_config, tmp_path)
    c.train_degrade.recipe = "chain"
    with pytest.raises(UserError, match="train_degrade"):
        train.train_and_evaluate(c, str(tmp_path / "b"))
    c = _cached_config(smoke_config, tmp_path)
    c.feature_cache = False
    with pytest.raises(UserError, match="fixed_degraded_copy"):
        train.train_and_evaluate(c, str(tmp_path / "c"))
