import jax
import jax.numpy as jnp
import numpy as np
import pytest

from brainjax import degrade


def _images(n=4, size=64, seed=0):
    from brainjax.data import phantom

    return jnp.asarray(np.stack([phantom.generate_slice(seed, i, i % 4, size) for i in range(n)]), jnp.float32) / 255


def _highfreq_energy(x):
    spec = jnp.abs(jnp.fft.fft2(x[..., 0]))
    h = x.shape[1]
    f = jnp.fft.fftfreq(h)
    mask = (jnp.abs(f)[:, None] > 0.25) | (jnp.abs(f)[None, :] > 0.25)
    return float((spec * mask).sum())


def test_noise_std_matches_level():
    x = jnp.full((8, 64, 64, 1), 0.5)
    for sev, sigma in enumerate(degrade.GAUSSIAN_NOISE_SIGMA[:3], start=1):  # below clipping
        y = degrade.corrupt(x, "gaussian_noise", sev, jax.random.key(0))
        assert abs(float(jnp.std(y - x)) - sigma) < 0.05 * sigma


def test_blur_removes_high_frequencies_monotonically():
    x = _images()
    energies = [_highfreq_energy(x)] + [_highfreq_energy(degrade.corrupt(x, "gaussian_blur", s, jax.random.key(0)))
                                         for s in (1, 3, 5)]
    assert all(a > b for a, b in zip(energies, energies[1:]))
    assert energies[-1] < 0.2 * energies[0]


def test_downsample_loses_detail_and_keeps_flat_images():
    x = _images()
    errs = [float(jnp.abs(degrade.corrupt(x, "downsample", s, jax.random.key(0)) - x).mean()) for s in (1, 3, 5)]
    assert 0 < errs[0] < errs[1] < errs[2]
    assert _highfreq_energy(degrade.corrupt(x, "downsample", 5, jax.random.key(0))) < 0.5 * _highfreq_energy(x)
    flat = jnp.full((2, 48, 48, 1), 0.3)
    np.testing.assert_allclose(degrade.corrupt(flat, "downsample", 5, jax.random.key(0)), flat, atol=1e-5)


@pytest.mark.parametrize("name", degrade.NAMES)
def test_each_example_is_corrupted_independently_of_its_batch(name):
    """Example i under its key gives the same image alone as inside a batch (what makes
    the corrupted test set the same for any batch size, device or process layout), in
    range, float32. A corruption that mixed examples or drew one key per batch fails."""
    x = _images(3)
    keys = degrade.example_keys(jax.random.key(1), jnp.arange(3))
    level = degrade.level_for(name, 4)
    fn = jax.jit(degrade.apply, static_argnums=(2,))
    batch = np.asarray(fn(x, keys, name, level))
    assert batch.shape == x.shape and batch.dtype == np.float32
    for i in range(3):
        alone = np.asarray(fn(x[i:i + 1], keys[i:i + 1], name, level))[0]
        np.testing.assert_allclose(alone, batch[i], atol=1e-5, err_msg=f"{name} example {i}")
    assert batch.min() >= 0 and batch.max() <= 1
    assert np.abs(batch - np.asarray(x)).max() > 1e-3  # severity 4 changes the image


def test_noise_draw_is_per_example():
    x = jnp.full((2, 32, 32, 1), 0.5)
    y = degrade.corrupt(x, "gaussian_noise", 2, jax.random.key(0))
    assert float(jnp.abs(y[0] - y[1]).mean()) > 0.05


def test_seed_chain_recipe():
    cfg = dict(recipe="chain", prob=1.0, gaussian_noise=(0.1, 0.2), gaussian_blur=(2.0, 4.0), downsample=(0.3, 0.5))
    x = _images(16)
    keys = degrade.example_keys(jax.random.key(3), jnp.arange(16))
    fn = jax.jit(lambda x, k: degrade.augment(x, k, cfg))  # compiled once, called twice
    y = fn(x, keys)
    assert y.shape == x.shape
    assert (jnp.abs(y - x).mean(axis=(1, 2, 3)) > 1e-3).all()  # prob=1: every image degraded
    np.testing.assert_array_equal(y, fn(x, keys))
    # prob=0 / recipe none are the identity
    np.testing.assert_array_equal(degrade.augment(x, keys, {**cfg, "prob": 0.0}), x)
    half = jax.jit(lambda x, k: degrade.augment(x, k, {**cfg, "prob": 0.5}))(x, keys)
    changed = int((jnp.abs(half - x).mean(axis=(1, 2, 3)) > 1e-3).sum())
    assert 2 <= changed <= 14


def test_example_keys_depend_only_on_global_index():
    rng = jax.random.key(0)
    a = degrade.example_keys(rng, jnp.arange(8))
    b = degrade.example_keys(rng, jnp.arange(4, 8))
    np.testing.assert_array_equal(jax.random.key_data(a[4:]), jax.random.key_data(b))


def test_bad_names_and_severities_are_clear():
    from brainjax.errors import UserError

    with pytest.raises(UserError, match="unknown corruption"):
        degrade.level_for("fog", 1)
    with pytest.raises(UserError, match="severity"):
        degrade.level_for("gaussian_noise", 6)


@pytest.mark.parametrize("sigma_224", [1.0, 3.0, 6.0])
def test_blur_matches_scipy_and_dm_pix(sigma_224):
    """Our matrix-form blur == scipy.ndimage.gaussian_filter (mode='mirror', i.e. the
    whole-sample reflection of jnp.pad 'reflect') == dm-pix on a reflect-padded image."""
    import dm_pix
    import scipy.ndimage as ndi

    x = np.random.default_rng(0).random((40, 56, 1)).astype(np.float32)
    sigma = sigma_224 * 40 / 224
    ours = np.asarray(degrade.gaussian_blur(jnp.asarray(x), None, sigma_224))
    ref = ndi.gaussian_filter(x[..., 0], sigma, mode="mirror", truncate=8.0)
    np.testing.assert_allclose(ours[..., 0], ref, atol=1e-5)
    k = 2 * int(np.ceil(4 * sigma)) + 1
    padded = jnp.pad(jnp.asarray(x), ((k // 2, k // 2), (k // 2, k // 2), (0, 0)), mode="reflect")
    np.testing.assert_allclose(ours, dm_pix.gaussian_blur(padded, sigma, k, padding="VALID"), atol=1e-5)


# ---------------------------------------------------------------- MRI corruption suite


def _psnr(a, b):
    mse = float(jnp.mean((a - b) ** 2))
    return 10 * np.log10(1.0 / max(mse, 1e-12))


@pytest.mark.parametrize("name", degrade.NAMES)
def test_every_corruption_jits_is_deterministic_and_monotonic(name):
    x = _images(4)
    fn = jax.jit(degrade.corrupt, static_argnums=(1, 2))
    outs = [fn(x, name, s, jax.random.key(7)) for s in range(1, 6)]
    for y in outs:
        assert y.shape == x.shape and y.dtype == jnp.float32
        assert float(y.min()) >= 0 and float(y.max()) <= 1
    np.testing.assert_array_equal(outs[2], fn(x, name, 3, jax.random.key(7)))
    psnr = [_psnr(x, y) for y in outs]
    assert all(a > b for a, b in zip(psnr, psnr[1:])), (name, psnr)  # worse with severity


def test_rician_noise_on_zero_image_has_rayleigh_mean():
    sigma = degrade.RICIAN_NOISE_SIGMA[1]
    y = degrade.corrupt(jnp.zeros((16, 64, 64, 1)), "rician_noise", 2, jax.random.key(0))
    assert abs(float(y.mean()) - sigma * np.sqrt(np.pi / 2)) < 0.02 * sigma * np.sqrt(np.pi / 2)


def test_kspace_mask_keeps_stated_share_and_centre():
    for keep in degrade.KSPACE_KEEP_FRACTION:
        for lines in (64, 97):
            mask = degrade.kspace_mask(jax.random.key(3), lines, keep)
            assert abs(float(mask.sum()) - round(keep * lines)) <= 1
            assert float(mask[lines // 2]) == 1.0  # DC line always kept
    x = _images(2)
    y = degrade.corrupt(x, "kspace_undersample", 5, jax.random.key(0))
    rows_energy = jnp.abs(jnp.fft.fftshift(jnp.fft.fft(y[..., 0] - x[..., 0], axis=1), axes=1))
    assert float(rows_energy.mean()) > 0  # changed


def test_bias_field_is_smooth_and_bounded():
    a = degrade.BIAS_FIELD_LOG_AMPLITUDE[-1]
    flat = jnp.full((4, 64, 64, 1), 0.5)
    y = degrade.corrupt(flat, "bias_field", 5, jax.random.key(0))
    ratio = y / 0.5
    assert float(ratio.min()) >= np.exp(-a) - 1e-5 and float(ratio.max()) <= np.exp(a) + 1e-5
    assert float(ratio.max() - ratio.min()) > 0.3  # not a no-op
    # smooth: >90% of the log-field energy below 4 cycles per image (white noise: ~2%)
    spec = jnp.abs(jnp.fft.fft2(jnp.log(ratio[..., 0]))) ** 2
    f = jnp.abs(jnp.fft.fftfreq(64) * 64)
    low = (f[:, None] <= 4) & (f[None, :] <= 4)
    assert float((spec * low).sum() / spec.sum()) > 0.9


def test_jpeg_quality_100_is_near_lossless_and_blocks_at_low_quality():
    x = _images(2)
    hi = degrade.jpeg(x[0], None, jnp.float32(100.0))
    assert float(jnp.abs(hi - x[0]).max()) < 4 / 255
    lo = degrade.jpeg(x[0], None, jnp.float32(5.0))
    assert _psnr(x[0], lo) < _psnr(x[0], hi) - 10


def test_motion_blur_and_ghosting_preserve_mean_intensity():
    x = _images(2)
    for name in ("motion_blur", "motion_ghosting"):
        y = degrade.corrupt(x, name, 3, jax.random.key(0))
        assert abs(float(y.mean() - x.mean())) < 0.02


def test_motion_blur_equals_bilinear_sampling_along_the_segment():
    """The separable shift-matrix form is exactly bilinear `map_coordinates` sampling with
    mirrored edges at every tap (odd and even sizes, lengths past the image border)."""
    for size in (33, 64):
        x = jax.random.uniform(jax.random.key(size), (3, size, size, 1))
        keys = jax.random.split(jax.random.key(1), 3)
        lengths = jnp.array([5.0, 30.0, 400.0])
        got = jax.vmap(degrade.motion_blur)(x, keys, lengths)
        for image, key, length_224, out in zip(x, keys, lengths, got):
            angle = jax.random.uniform(key, (), minval=0.0, maxval=jnp.pi)
            length = length_224 * size / degrade.REFERENCE_SIZE
            rows, cols = jnp.meshgrid(jnp.arange(size, dtype=jnp.float32), jnp.arange(size, dtype=jnp.float32),
                                      indexing="ij")
            taps = [jax.scipy.ndimage.map_coordinates(image[..., 0], [rows + o * jnp.sin(angle), cols + o * jnp.cos(angle)],
                                                      order=1, mode="mirror")
                    for o in (np.arange(17) / 16 - 0.5) * float(length)]
            np.testing.assert_allclose(out[..., 0], np.mean(taps, axis=0), atol=2e-6)


@pytest.mark.parametrize("recipe", ["chain", "ordered", "one", pytest.param("augmix", marks=pytest.mark.slow)])
def test_training_recipes_over_the_full_suite(recipe):
    cfg = {"recipe": recipe, "prob": 1.0, "max_ops": 2, "augmix_width": 2,
           **{name: (levels[0], levels[2]) for name, levels in degrade.SEVERITIES.items()}}
    x = _images(8)
    keys = degrade.example_keys(jax.random.key(0), jnp.arange(8))
    fn = jax.jit(lambda x, k: degrade.augment(x, k, cfg))  # compiled once, called twice
    y = fn(x, keys)
    assert y.shape == x.shape
    assert float(jnp.abs(y - x).mean()) > 1e-3
    np.testing.assert_array_equal(y, fn(x, keys))


def test_ordered_recipe_is_the_chain_draw_in_acquisition_order():
    """Same key: the same corruptions at the same levels as the chain (equal quality
    targets); with one corruption per image the order cannot matter, so the images are
    equal too; with several they are applied in ACQUISITION_ORDER."""
    some = {name: (levels[0], levels[-1]) for name, levels in degrade.SEVERITIES.items()
            if name in ("gaussian_noise", "downsample", "kspace_undersample", "bias_field", "jpeg")}
    x = _images(8)
    keys = degrade.example_keys(jax.random.key(5), jnp.arange(8))
    run = jax.jit(lambda x, k, recipe, ops: degrade.augment_with_targets(
        x, k, {"recipe": recipe, "prob": 0.8, "max_ops": ops, **some}), static_argnums=(2, 3))
    (chain, t_chain), (ordered, t_ordered) = run(x, keys, "chain", 3), run(x, keys, "ordered", 3)
    np.testing.assert_array_equal(t_chain, t_ordered)
    assert (np.asarray(t_chain) > 0).sum(axis=1).max() > 1  # some images got several corruptions
    one_chain, one_ordered = run(x, keys, "chain", 1)[0], run(x, keys, "ordered", 1)[0]
    np.testing.assert_allclose(one_ordered, one_chain, atol=1e-6)
    # two corruptions by hand, in acquisition order (bias field first, JPEG last), with the
    # per-corruption keys the draw uses (`_draw`: 5-way split, the last for the ops)
    cfg = {"recipe": "ordered", "prob": 1.0, "max_ops": 2, "bias_field": (0.5, 0.5), "jpeg": (10.0, 10.0)}
    got, targets = jax.jit(lambda x, k: degrade.augment_with_targets(x, k, cfg))(x, keys)
    both = np.nonzero((np.asarray(targets) > 0).sum(axis=1) == 2)[0]
    assert len(both) > 0
    for i in both:
        k_bias, k_jpeg = jax.random.split(jax.random.split(keys[i], 5)[4], 2)  # names in NAMES order
        first_bias = degrade.jpeg(degrade.bias_field(x[i], k_bias, 0.5), k_jpeg, 10.0)
        first_jpeg = degrade.bias_field(degrade.jpeg(x[i], k_jpeg, 10.0), k_bias, 0.5)
        np.testing.assert_allclose(got[i], first_bias, atol=1e-5)
        assert float(jnp.abs(first_bias - first_jpeg).max()) > 1e-2


def test_gallery_png(tmp_path):
    from brainjax import plots

    x = np.asarray(_images(1)[0])
    out = tmp_path / "g.png"
    plots.gallery(x, str(out))
    assert out.stat().st_size > 20_000


def test_mce_against_reference():
    from brainjax import evaluators

    mk = lambda acc: {"accuracy": acc}
    clean, ref_clean = {"accuracy": 0.9, "macro_f1": 0.9}, {"accuracy": 0.9}
    degraded = {"gaussian_noise": {"1": mk(0.8), "2": mk(0.6)}}
    reference = {"clean": ref_clean, "degraded": {"gaussian_noise": {"1": mk(0.6), "2": mk(0.2)}}}
    s = evaluators.summarize(clean, degraded, reference)
    assert s["corruption_error"]["gaussian_noise"] == pytest.approx((0.2 + 0.4) / (0.4 + 0.8))
    assert s["mCE"] == pytest.approx(0.5)
    assert s["relative_mCE"] == pytest.approx((0.6 - 0.2) / (1.2 - 0.2))
