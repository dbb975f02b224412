"""Winograd F(2x2, 3x3) convolutions equal XLA's direct ones (values and gradients)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from brainjax.models import vgg, winograd


def _direct(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 7, 7, 8), (1, 13, 10, 4), (3, 1, 1, 2)])
def test_matches_direct_convolution(shape):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(3, 3, shape[-1], 5)).astype(np.float32))
    ref = _direct(x, w)
    got = jax.jit(winograd.conv3x3_same)(x, w)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * float(jnp.abs(ref).max()))


def test_gradients_match_direct_convolution():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 9, 6, 4)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(3, 3, 4, 3)).astype(np.float32))
    t = jnp.asarray(rng.normal(size=(2, 9, 6, 3)).astype(np.float32))
    loss = lambda f: (lambda x, w: jnp.sum(f(x, w) * t))  # noqa: E731
    gx, gw = jax.grad(loss(winograd.conv3x3_same), argnums=(0, 1))(x, w)
    rx, rw = jax.grad(loss(_direct), argnums=(0, 1))(x, w)
    np.testing.assert_allclose(gx, rx, rtol=0, atol=1e-5 * float(jnp.abs(rx).max()))
    np.testing.assert_allclose(gw, rw, rtol=0, atol=1e-5 * float(jnp.abs(rw).max()))


def test_conv3x3_has_nn_conv_parameters_and_output():
    """Same parameter tree as nn.Conv (Keras weights load unchanged), same output for
    either implementation."""
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 6, 6, 4)).astype(np.float32))
    ref_module = nn.Conv(256, (3, 3), padding="SAME")
    params = ref_module.init(jax.random.key(0), x)
    ref = ref_module.apply(params, x)
    for impl in ("direct", "winograd", "auto"):
        module = vgg.Conv3x3(256, impl)
        shapes = jax.tree.map(jnp.shape, module.init(jax.random.key(0), x))
        assert shapes == jax.tree.map(jnp.shape, params)
        np.testing.assert_allclose(module.apply(params, x), ref, rtol=0, atol=1e-5 * float(jnp.abs(ref).max()))
    assert vgg.use_winograd("auto", 256) == (jax.default_backend() == "cpu")
    assert not vgg.use_winograd("auto", 64)
    with pytest.raises(ValueError, match="conv_impl"):
        vgg.use_winograd("fast", 256)


def test_max_pool_2x2_matches_flax_values_and_gradients():
    rng = np.random.default_rng(3)
    for shape in [(2, 8, 8, 3), (1, 7, 9, 2)]:
        x = jnp.asarray(rng.normal(size=shape).astype(np.float32))
        ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")  # noqa: E731
        np.testing.assert_array_equal(vgg.max_pool_2x2(x), ref(x))
        t = jnp.asarray(rng.normal(size=ref(x).shape).astype(np.float32))
        g = jax.grad(lambda x: jnp.sum(vgg.max_pool_2x2(x) * t))(x)
        np.testing.assert_array_equal(g, jax.grad(lambda x: jnp.sum(ref(x) * t))(x))
