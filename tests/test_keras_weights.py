"""Keras ImageNet-weight loading: parity with Keras itself on random weights saved in the
published layouts, and clear errors for wrong, damaged or missing files."""

import os
import subprocess
import sys
import time

import h5py
import jax
import numpy as np
from conftest import restore_run
import pytest

keras = pytest.importorskip("keras")

from brainjax.errors import UserError  # noqa: E402
from brainjax import models  # noqa: E402
from brainjax.models import keras_weights  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CTORS = {"vgg16": "VGG16", "vgg19": "VGG19", "resnet50v2": "ResNet50V2"}
PREPROCESS = {"vgg16": "vgg16", "vgg19": "vgg19", "resnet50v2": "resnet_v2"}


def keras_model(arch, seed=0):
    """keras.applications model (include_top=False) with random weights everywhere,
    including biases and non-trivial BatchNorm moving statistics."""
    model = getattr(keras.applications, CTORS[arch])(weights=None, include_top=False, input_shape=(None, None, 3))
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            c = weights[0].shape
            weights = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.5, c), rng.uniform(0.5, 2.0, c)]
        else:
            weights = [weights[0]] + [rng.normal(0, 0.05, w.shape) for w in weights[1:]]
        layer.set_weights([w.astype(np.float32) for w in weights])
    return model


def save_legacy_h5(model, path):
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return str(path)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{arch: (keras model, legacy h5 path)}, built once."""
    out = {}
    for arch in CTORS:
        model = keras_model(arch)
        out[arch] = (model, save_legacy_h5(model, tmp_path_factory.mktemp(arch) / f"{arch}_random.h5"))
    return out


def _compare(arch, model, variables, module, shape, seed=0):
    images = np.random.default_rng(seed).uniform(0, 255, (2, *shape, 3)).astype(np.float32)
    preprocess = getattr(keras.applications, PREPROCESS[arch]).preprocess_input
    expected = np.asarray(model(preprocess(images.copy()), training=False))
    got = np.asarray(jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, images))
    assert got.shape == expected.shape
    rel = float(np.abs(got - expected).max() / np.abs(expected).max())
    print(f"{arch} {shape}: max|diff| / max|keras| = {rel:.2e}")
    return rel


@pytest.mark.parametrize("arch", list(CTORS))
@pytest.mark.parametrize("shape", [(224, 224), (193, 161)])
def test_parity_with_keras_legacy_h5(saved, arch, shape):
    model, path = saved[arch]
    module, variables = models.pretrained(arch, path)
    assert _compare(arch, model, variables, module, shape) <= 1e-4


def test_published_vgg16_layout_with_old_weight_names(saved, tmp_path):
    """Exactly the layout of vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5: root
    layer_names incl. weightless layers, per-layer weight_names like block1_conv1_W_1:0."""
    model, _ = saved["vgg16"]
    path = tmp_path / "vgg16_like_published.h5"
    with h5py.File(path, "w") as f:
        names = [l.name for l in model.layers]
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.0.8"
        for layer in model.layers:
            g = f.create_group(layer.name)
            ws = layer.get_weights()
            wnames = [f"{layer.name}_{t}_1:0" for t in ("W", "b")][: len(ws)]
            g.attrs["weight_names"] = np.array([w.encode() for w in wnames])
            for w, arr in zip(wnames, ws):
                g.create_dataset(w, data=arr)
    module, variables = models.pretrained("vgg16", str(path))
    assert _compare("vgg16", model, variables, module, (64, 64)) <= 1e-4


def test_keras3_weights_h5_and_keras_files(saved, tmp_path):
    model, _ = saved["resnet50v2"]
    w3 = str(tmp_path / "rn.weights.h5")
    model.save_weights(w3)
    module, variables = models.pretrained("resnet50v2", w3)
    assert _compare("resnet50v2", model, variables, module, (96, 80)) <= 1e-4
    k3 = str(tmp_path / "rn.keras")
    model.save(k3)
    module, variables = models.pretrained("resnet50v2", k3)
    assert _compare("resnet50v2", model, variables, module, (96, 80)) <= 1e-4


def test_wrong_architecture_names_layer_file_and_shapes(saved):
    _, vgg19_path = saved["vgg19"]
    with pytest.raises(UserError) as err:
        models.pretrained("vgg16", vgg19_path)
    msg = str(err.value)
    assert vgg19_path in msg and "block5_conv4" in msg  # extra layer named
    _, rn_path = saved["resnet50v2"]
    with pytest.raises(UserError, match="missing from the file"):
        models.pretrained("vgg16", rn_path)


def test_shape_mismatch_message(saved, tmp_path):
    model, _ = saved["vgg16"]
    path = save_legacy_h5(model, tmp_path / "v.h5")
    with h5py.File(path, "a") as f:
        g = f["block3_conv2"]
        name = [n.decode() if isinstance(n, bytes) else n for n in g.attrs["weight_names"]][0]
        del g[name]
        g.create_dataset(name, data=np.zeros((3, 3, 256, 128), np.float32))
    with pytest.raises(UserError, match=r"block3_conv2 \(kernel\): file shape \(3, 3, 256, 128\), model shape \(3, 3, 256, 256\)"):
        models.pretrained("vgg16", path)


def test_truncated_file_is_clear(saved, tmp_path):
    _, path = saved["vgg16"]
    cut = tmp_path / "truncated.h5"
    cut.write_bytes(open(path, "rb").read()[:100_000])
    with pytest.raises(UserError, match="truncated"):
        models.pretrained("vgg16", str(cut))


def test_official_name_is_md5_verified(saved, tmp_path):
    _, path = saved["vgg16"]
    official = tmp_path / keras_weights.OFFICIAL["vgg16"][0]
    official.write_bytes(open(path, "rb").read())
    with pytest.raises(UserError, match="md5 .* does not match the official 6d6bbae1"):
        keras_weights.locate("vgg16", "imagenet", weights_dir=str(tmp_path))


def test_missing_imagenet_weights_without_internet(tmp_path, monkeypatch):
    name, _, digest = keras_weights.OFFICIAL["resnet50v2"]
    monkeypatch.setitem(keras_weights.OFFICIAL, "resnet50v2", (name, "http://127.0.0.1:9/" + name, digest))
    monkeypatch.setattr(keras_weights, "KERAS_CACHE", str(tmp_path / "keras_cache"))
    t0 = time.time()
    with pytest.raises(UserError) as err:
        keras_weights.locate("resnet50v2", "imagenet", weights_dir=str(tmp_path / "weights"))
    assert time.time() - t0 < 10
    msg = str(err.value)
    assert name in msg and "http://127.0.0.1:9/" in msg and str(tmp_path / "weights") in msg


def test_launch_with_imagenet_weights_missing_stops_cleanly(tmp_path, data_dir):
    env = {**os.environ, "HOME": str(tmp_path), "BRAINJAX_WEIGHTS_DIR": str(tmp_path / "w")}
    cmd = [sys.executable, "launch.py", f"--workdir={tmp_path / 'run'}", "--config=configs/smoke.py",
           f"--config.data_dir={data_dir}", "--config.model.backbone=vgg16", "--config.model.weights=imagenet"]
    t0 = time.time()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in out.stderr
    assert "Traceback" not in out.stderr
    assert time.time() - t0 < 120


@pytest.mark.slow  # 69 s; the frozen-base step, partition and weight-loading tests above stay
def test_frozen_transfer_through_launch(saved, tmp_path, data_dir):
    """A loaded, frozen VGG16 base + enhanced head trains through launch.py; base unchanged."""
    from flax import traverse_util

    from configs import smoke

    model_k, path = saved["vgg16"]
    workdir = tmp_path / "run"
    overrides = ["--config.model.backbone=vgg16", f"--config.model.weights={path}", "--config.trainable=('^head/',)",
                 "--config.model.head=enhanced", "--config.model.head_hidden=(64,32)", "--config.num_epochs=1"]
    cmd = [sys.executable, "launch.py", f"--workdir={workdir}", "--config=configs/smoke.py",
           f"--config.data_dir={data_dir}", "--config.eval.corruptions=()", "--config.train_split=train[:40%]",
           *overrides]
    # one device: VGG16 on 8 fake devices of a 2-core machine is mostly overhead
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    config = smoke.get_config()
    config.model.backbone = "vgg16"
    config.model.head_hidden = (64, 32)
    config.trainable = ("^head/",)
    model = models.create_model(config.model, 4)
    state, _, loop = restore_run(str(workdir), config)
    assert int(state.step) > 0
    base = traverse_util.flatten_dict(jax.device_get(state.params)["backbone"])
    for layer in model_k.layers:
        for arr, leaf in zip(layer.get_weights(), ("kernel", "bias")):
            np.testing.assert_array_equal(base[(layer.name, leaf)], arr)
