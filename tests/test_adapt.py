"""Test-time BatchNorm adaptation (brainjax/evaluators/adapt.py): the statistics it
finds are the split's exact population statistics (what flax's own BatchNorm computes
in train mode over the whole split as one batch), padding never counts, and it stops at
the fixed point."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from brainjax import evaluators, models, parallel
from brainjax.data import phantom
from brainjax.errors import UserError

MODEL_CFG = {"backbone": "tiny", "head": "baseline", "head_hidden": (8,), "dropout": 0.0,
             "standardize": "zscore", "base_batchnorm_train": True,
             "tiny": {"widths": (4, 8), "convs_per_block": 1, "batchnorm": True}}
SIZE = 32


def _images(n: int) -> np.ndarray:
    return np.stack([phantom.generate_slice(7, i, i % 4, SIZE) for i in range(n)]).astype(np.uint8)


def _padded_batches(images: np.ndarray, per_device: int = 1):
    """Eval batches as the pipeline lays them out: [devices, per_device, ...] with a mask;
    the padding rows are bright garbage, which must not move any statistic."""
    devices = jax.local_device_count()
    size = devices * per_device
    for start in range(0, len(images), size):
        chunk = images[start:start + size]
        mask = np.zeros(size, np.float32)
        mask[:len(chunk)] = 1
        pad = np.full((size - len(chunk), *chunk.shape[1:]), 255, np.uint8)
        image = np.concatenate([chunk, pad]).reshape(devices, per_device, *chunk.shape[1:])
        yield {"image": image, "mask": mask.reshape(devices, per_device),
               "label": np.zeros((devices, per_device), np.int32),
               "index": np.arange(start, start + size, dtype=np.int32).reshape(devices, per_device)}


def _model_and_shifted_variables():
    model = models.create_model(MODEL_CFG, 4)
    variables = models.init_variables(model, jax.random.key(0), (SIZE, SIZE, 1))
    # Statistics of "another source": far from this split's.
    leaves, tree = jax.tree.flatten(variables["batch_stats"])
    keys = jax.random.split(jax.random.key(1), len(leaves))
    shifted = [jnp.abs(jax.random.normal(k, x.shape)) * 3.0 + 0.5 for k, x in zip(keys, leaves)]
    return model, {"params": variables["params"], "batch_stats": jax.tree.unflatten(tree, shifted)}


def test_adapted_statistics_are_the_splits_population_statistics():
    model, variables = _model_and_shifted_variables()
    images = _images(11)  # 8 devices x 1: two batches, the second with 5 padding rows
    adapt = evaluators.make_batchnorm_adapter(model, variables["batch_stats"])
    adapted, info = adapt(parallel.replicate(variables), lambda: _padded_batches(images))
    got = parallel.unreplicate(adapted["batch_stats"])
    # Reference: flax's BatchNorm in train mode over the whole split as one batch updates
    # each running statistic to m * old + (1 - m) * batch statistic (m = 0.9).
    x = jnp.asarray(images, jnp.float32) / 255.0
    _, updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
    expected = jax.tree.map(lambda new, old: (np.asarray(new) - 0.9 * np.asarray(old)) / 0.1,
                            updated["batch_stats"], variables["batch_stats"])
    jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, rtol=2e-3, atol=2e-4), got, expected)
    # ... and far from where they started (the check is not vacuous).
    start = jax.tree.leaves(variables["batch_stats"])
    assert max(float(np.max(np.abs(g - np.asarray(s)))) for g, s in zip(jax.tree.leaves(got), start)) > 0.5
    layers = evaluators.adapt.count_batchnorm_layers(variables["batch_stats"])
    assert layers >= 2 and info["passes"] <= layers + 1 and info["residual"] < 1e-4
    # Parameters untouched; adapting again from the fixed point is one pass, no change.
    jax.tree.map(np.testing.assert_array_equal, parallel.unreplicate(adapted["params"]), variables["params"])
    again, info_again = adapt(adapted, lambda: _padded_batches(images))
    assert info_again["passes"] == 1
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 parallel.unreplicate(again["batch_stats"]), got)


def test_statistics_do_not_depend_on_the_batch_layout():
    """Every example counts once whatever the batching and padding (2 per device: one
    batch of 16 with 5 padding rows, vs 1 per device: two batches)."""
    model, variables = _model_and_shifted_variables()
    images = _images(11)
    adapt = evaluators.make_batchnorm_adapter(model, variables["batch_stats"])
    one, _ = adapt(parallel.replicate(variables), lambda: _padded_batches(images, per_device=1))
    two, _ = adapt(parallel.replicate(variables), lambda: _padded_batches(images, per_device=2))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 parallel.unreplicate(one["batch_stats"]), parallel.unreplicate(two["batch_stats"]))


def test_adapting_on_a_stack_of_files_equals_adapting_on_the_split():
    """--mode=predict adapts on its files (one padded batch over the devices): the same
    statistics as the split's padded eval batches."""
    model, variables = _model_and_shifted_variables()
    images = _images(11)
    adapt = evaluators.make_batchnorm_adapter(model, variables["batch_stats"])
    split, _ = adapt(parallel.replicate(variables), lambda: _padded_batches(images))
    files, info = evaluators.adapt_on_images(adapt, variables, images)
    assert info["passes"] >= 2
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 files["batch_stats"], parallel.unreplicate(split["batch_stats"]))


def test_a_model_without_batchnorm_is_a_clear_error():
    model = models.create_model({**MODEL_CFG, "tiny": {"widths": (4, 8), "convs_per_block": 1}}, 4)
    variables = models.init_variables(model, jax.random.key(0), (SIZE, SIZE, 1))
    with pytest.raises(UserError, match="adapt_batchnorm"):
        evaluators.make_batchnorm_adapter(model, variables.get("batch_stats", {}))
