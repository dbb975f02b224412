"""Intensity standardisation (brainjax/intensity.py) and appearance augmentations
(brainjax/augmentations.py): invariance, determinism, ranges, and the model input path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from brainjax import augmentations, degrade, intensity, models
from brainjax.data import phantom
from brainjax.errors import UserError


def _slices(n=4, size=48, seed=0):
    """Phantom MRI slices in [0, 1] (dark background, a head, a lesion), float32."""
    images = np.stack([phantom.generate_slice(seed, i, i % 4, size) for i in range(n)])
    return jnp.asarray(images, jnp.float32) / 255.0


@pytest.mark.parametrize("method", ["zscore", "zscore_foreground", "percentile"])
@pytest.mark.parametrize("a,b", [(0.3, 0.05), (2.5, -0.4), (0.05, 0.6)])
def test_standardisation_is_invariant_to_positive_affine_intensity_change(method, a, b):
    x = _slices()
    ref = intensity.model_input(x, method)
    out = intensity.model_input(a * x + b, method)
    # float32 error: a=0.05, b=0.6 leaves the image ~5 fewer mantissa bits of its range
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-4)
    # ... and it is not the identity: the unstandardised inputs differ by far more.
    assert float(jnp.max(jnp.abs((a * x + b) - x))) > 0.04


def test_foreground_mask_is_the_head_and_moves_with_the_image():
    x = _slices(n=2, size=64)
    mask = jax.vmap(intensity.foreground_mask)(x)
    assert not bool(mask[:, 0, 0, 0].any())  # the corner is background
    assert bool(mask[:, 32, 32, 0].all())  # the centre is head
    np.testing.assert_array_equal(np.asarray(jax.vmap(intensity.foreground_mask)(0.2 * x + 0.3)), np.asarray(mask))
    # Foreground statistics differ from whole-image ones (the background is not counted).
    assert float(jnp.max(jnp.abs(intensity.standardize(x, "zscore_foreground")
                                 - intensity.standardize(x, "zscore")))) > 0.1


def test_zscore_statistics_and_constant_image():
    x = _slices()
    z = intensity.standardize(x, "zscore")
    np.testing.assert_allclose(np.asarray(z.mean(axis=(1, 2, 3))), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(z.std(axis=(1, 2, 3))), 1.0, atol=1e-4)
    flat = jnp.full((1, 8, 8, 1), 0.7)
    for method in intensity.METHODS:
        assert bool(jnp.isfinite(intensity.model_input(flat, method)).all())


@pytest.mark.parametrize("method", intensity.METHODS)
def test_model_input_is_in_the_keras_range(method):
    """The ImageNet path: the backbone sees RGB in [0, 255], whatever the standardisation,
    with ordinary contrast (not a near-constant image)."""
    x = _slices()
    model = models.create_model({"backbone": "vgg16", "head": "baseline", "standardize": method}, 4)
    rgb = model.backbone_input(x)
    assert rgb.shape == (*x.shape[:3], 3)
    assert float(rgb.min()) >= 0.0 and float(rgb.max()) <= 255.0
    assert float(rgb.max()) - float(rgb.min()) > 150.0
    np.testing.assert_array_equal(np.asarray(rgb[..., 0]), np.asarray(rgb[..., 2]))


def test_none_keeps_the_old_input_path():
    x = _slices()
    model = models.create_model({"backbone": "tiny", "head": "baseline"}, 4)  # old configs: no field
    np.testing.assert_array_equal(np.asarray(model.backbone_input(x)), np.asarray(jnp.repeat(x * 255.0, 3, -1)))


def test_classifier_is_invariant_to_contrast_corruption_with_zscore():
    """Why standardisation: ImageNet-C contrast is an affine change, which a z-scored
    model does not see; without standardisation the logits move."""
    x = _slices()
    low = degrade.corrupt(x, "contrast", 5, jax.random.key(0))
    logits = {}
    for method in ("none", "zscore"):
        model = models.create_model({"backbone": "tiny", "head": "baseline", "standardize": method,
                                     "tiny": {"widths": (4, 8), "convs_per_block": 1}}, 4)
        variables = models.init_variables(model, jax.random.key(1), x.shape[1:])
        apply = jax.jit(model.apply)
        logits[method] = [np.asarray(apply(variables, im)) for im in (x, low)]
    np.testing.assert_allclose(logits["zscore"][1], logits["zscore"][0], atol=1e-4)
    assert np.max(np.abs(logits["none"][1] - logits["none"][0])) > 1e-3


def test_unknown_method_is_a_clear_error():
    with pytest.raises(UserError, match="model.standardize"):
        models.create_model({"backbone": "tiny", "head": "baseline", "standardize": "zscor"}, 4)


CFG = dict(prob=1.0, gamma=(0.7, 1.5), brightness=(-0.1, 0.1), contrast=(0.6, 1.4), bias_field=(0.0, 0.4),
           rotate_deg=10.0, scale=(0.9, 1.1), translate=0.05, gin=(0.0, 1.0))


# gin alone: test_gin_* below (range, background, both signs); "all" includes it.
@pytest.mark.parametrize("op", ["gamma", "brightness", "contrast", "bias_field", "geometry", "all"])
def test_each_augmentation_is_deterministic_in_its_key_and_stays_in_range(op):
    x = _slices(n=6, size=32)
    if op == "all":
        cfg = CFG
    elif op == "geometry":
        cfg = dict(prob=1.0, rotate_deg=10.0, scale=(0.9, 1.1), translate=0.05)
    else:
        cfg = {"prob": 1.0, op: CFG[op]}
    keys = degrade.example_keys(jax.random.key(3), jnp.arange(6))
    fn = jax.jit(lambda x, k: augmentations.apply(x, k, cfg))
    a, b = np.asarray(fn(x, keys)), np.asarray(fn(x, keys))
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0.0 and a.max() <= 1.0
    other = np.asarray(fn(x, degrade.example_keys(jax.random.key(4), jnp.arange(6))))
    assert np.abs(a - other).max() > 1e-3  # another key, another draw
    assert np.abs(a - np.asarray(x)).max() > 1e-3  # it does change the image
    if op == "all":  # per example: a result depends on its own key only, not on its batch
        # (atol: gin's per-example convolutions run grouped, their sums in another order)
        np.testing.assert_allclose(np.asarray(fn(x[2:4], keys[2:4])), a[2:4], atol=1e-5)


def test_gin_remaps_tissue_contrast_both_ways_and_keeps_the_background_black():
    """GIN's point is a non-monotone remapping of tissue brightness (a new sequence can
    invert it): over random networks the output's correlation with the input, over the
    head, must take both signs; the black background of the scan stays black."""
    x = _slices(n=2, size=48)
    head = np.asarray(jax.vmap(intensity.foreground_mask)(x))[..., 0]
    fn = jax.jit(jax.vmap(lambda k: augmentations.gin(x[0], k, 1.0)))
    outs = np.asarray(fn(jax.random.split(jax.random.key(0), 24)))[..., 0]
    corr = np.array([np.corrcoef(o[head[0]], np.asarray(x[0, ..., 0])[head[0]])[0, 1] for o in outs])
    assert corr.min() < -0.3 and corr.max() > 0.3, corr
    assert outs.min() >= 0.0 and outs.max() <= 1.0
    # A corner is background: black up to the soft head mask's tail (sigmoid(-5) = 0.007).
    np.testing.assert_allclose(outs[:, :3, :3], 0.0, atol=0.01)


def test_gin_leaves_the_other_ops_draws_unchanged():
    """gin draws from its own key stream: alpha = 0 (the image itself) reproduces a config
    without gin bit for bit, so configs measured before gin existed still draw the same."""
    x = _slices(n=3, size=32)
    keys = degrade.example_keys(jax.random.key(5), jnp.arange(3))
    without = {"prob": 1.0, "gamma": CFG["gamma"], "contrast": CFG["contrast"], "rotate_deg": 10.0}
    a = jax.jit(lambda x, k: augmentations.apply(x, k, without))(x, keys)
    b = jax.jit(lambda x, k: augmentations.apply(x, k, dict(without, gin=(0.0, 0.0))))(x, keys)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_affine_matrix_rotates_about_the_centre():
    """A 90-degree rotation about the centre maps a pixel to the expected place (pure
    geometry, not a statement about dm-pix internals): output (y, x) reads input
    M @ (y, x) + offset."""
    matrix, offset = augmentations.affine_matrix(jnp.pi / 2, 1.0, jnp.zeros(2), 9, 9)
    src = matrix @ jnp.array([4.0, 8.0, 0.0]) + offset  # the right-edge centre of the output
    np.testing.assert_allclose(np.asarray(src[:2]), [0.0, 4.0], atol=1e-5)
    image = jnp.zeros((9, 9, 1)).at[0, 4, 0].set(1.0)  # the top-edge centre of the input
    import dm_pix as pix
    moved = jax.jit(lambda im: pix.affine_transform(im, matrix, offset=offset, order=1, mode="constant"))(image)
    assert float(moved[4, 8, 0]) == pytest.approx(1.0, abs=1e-5)


def test_prob_zero_and_bad_config():
    x = _slices(n=2)
    keys = degrade.example_keys(jax.random.key(0), jnp.arange(2))
    np.testing.assert_array_equal(np.asarray(augmentations.apply(x, keys, dict(CFG, prob=0.0))), np.asarray(x))
    with pytest.raises(UserError, match="unknown field"):
        augmentations.apply(x, keys, {"prob": 1.0, "gama": (0.5, 2.0)})
    with pytest.raises(UserError, match="train_augment.contrast"):
        augmentations.apply(x, keys, {"prob": 1.0, "contrast": (1.4, 0.6)})
    with pytest.raises(UserError, match="train_augment.gin"):
        augmentations.apply(x, keys, {"prob": 1.0, "gin": (0.0, 1.5)})
