"""contrast_remap (issue 46): a random smooth, possibly non-monotonic intensity map over
the head, on device, per example, with its own key stream; and the phantom's one-sequence
sites."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from brainjax import augmentations, intensity
from brainjax.data import phantom


def _images(n=16, size=48, weighting="mixed"):
    x = np.stack([phantom.generate_slice(4, i, i % 4, size, weighting) for i in range(n)])
    return jnp.asarray(x, jnp.float32) / 255.0


def _keys(n, seed=0):
    return jax.random.split(jax.random.key(seed), n)


def test_contrast_remap_is_deterministic_in_range_and_keeps_the_background_black():
    x = _images()
    f = jax.jit(jax.vmap(augmentations.contrast_remap))
    a, b = np.asarray(f(x, _keys(16))), np.asarray(f(x, _keys(16)))
    np.testing.assert_array_equal(a, b)  # the same key, the same map
    assert not np.array_equal(a, np.asarray(f(x, _keys(16, seed=1))))
    assert a.min() >= 0.0 and a.max() <= 1.0
    background = np.asarray(intensity.foreground_weights(x)) < 0.01
    assert background.any() and np.abs(a[background]).max() < 0.01


def test_contrast_remap_takes_both_signs_of_correlation_over_the_head():
    """Over the head, the remapped image correlates positively with the input for some
    keys and negatively for others: tissue order can invert, as between T1 and T2."""
    x = _images(n=1)[0]
    head = np.asarray(jnp.mean(intensity.foreground_weights(x), axis=-1)) > 0.5
    out = np.asarray(jax.jit(jax.vmap(augmentations.contrast_remap, in_axes=(None, 0)))(x, _keys(40)))
    corr = [np.corrcoef(np.asarray(x)[..., 0][head], o[..., 0][head])[0, 1] for o in out]
    assert min(corr) < -0.3 and max(corr) > 0.3, np.round(corr, 2)


def test_the_curve_is_smooth_and_passes_through_its_points():
    ys = jnp.array([0.2, 0.9, 0.1, 0.6, 0.4])
    xs = jnp.linspace(0, 1, 5)
    np.testing.assert_allclose(np.asarray(augmentations.remap_curve(xs, ys)), np.asarray(ys), atol=1e-6)
    fine = np.asarray(augmentations.remap_curve(jnp.linspace(0, 1, 1001), ys))
    assert np.abs(np.diff(fine)).max() < 0.01  # no jumps


@pytest.mark.parametrize("others", [{"prob": 0.0}, {"prob": 0.5, "gamma": (0.7, 1.5), "gin": (0.0, 1.0),
                                                     "rotate_deg": 10.0}])
def test_probability_zero_reproduces_the_config_without_it_bit_for_bit(others):
    x = _images()
    keys = _keys(16, seed=3)
    without = np.asarray(jax.jit(lambda x, k: augmentations.apply(x, k, others))(x, keys))
    with_zero = np.asarray(jax.jit(lambda x, k: augmentations.apply(x, k, {**others, "contrast_remap": 0.0}))(x, keys))
    np.testing.assert_array_equal(without, with_zero)
    on = np.asarray(jax.jit(lambda x, k: augmentations.apply(x, k, {**others, "contrast_remap": 1.0}))(x, keys))
    assert not np.array_equal(without, on)


def test_a_bad_contrast_remap_is_one_clear_error():
    from brainjax.errors import UserError

    with pytest.raises(UserError, match="contrast_remap is a probability"):
        augmentations.check_config({"contrast_remap": 2.0})


def test_the_phantom_sites_differ_in_sequence_only():
    """The same draw as T1 and as T2: CSF (the ventricles) dark in one, bright in the
    other; the mixed phantom is unchanged by the option."""
    t1, t2 = (phantom.generate_slice(1, 5, 2, 64, w)[..., 0].astype(float) for w in ("t1", "t2"))
    mixed = phantom.generate_slice(1, 5, 2, 64)
    assert np.array_equal(mixed, phantom.generate_slice(1, 5, 2, 64, "t1")) or \
        np.array_equal(mixed, phantom.generate_slice(1, 5, 2, 64, "t2"))
    head = t1 > 10
    assert np.corrcoef(t1[head], t2[head])[0, 1] < 0.5  # tissue order changes between the sequences
