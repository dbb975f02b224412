"""Test setup: 8 fake CPU devices (multi-device code paths), a shared tiny phantom build."""

import os
import shutil
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# One JAX persistent compilation cache for the whole test session: both xdist workers
# and every launch.py subprocess (they inherit the environment) compile the same smoke
# programs again and again; a cache hit returns the executable XLA built for the same
# program, compile options and device assignment, so results are unchanged (the bitwise
# resume tests still compare bit for bit). Created by the first process that imports
# this file (the xdist controller), removed when it exits; a cache the developer set
# already is used as it is. Issue 25: measured in BUILD_NOTES session 11.
_OWN_COMPILATION_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_COMPILATION_CACHE = tempfile.mkdtemp(prefix="brainjax-test-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_COMPILATION_CACHE
    # every program, not only those over 1 s to compile (the smoke steps take less)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from brainjax import xla_flags  # noqa: E402

xla_flags.apply_cpu_defaults()

import pytest  # noqa: E402


def pytest_unconfigure(config):
    if _OWN_COMPILATION_CACHE:
        shutil.rmtree(_OWN_COMPILATION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """tfds data_dir with `brain_phantom/small` built once per session."""
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    import tensorflow_datasets as tfds

    import brainjax.data  # noqa: F401

    path = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("brain_phantom/small", data_dir=path).download_and_prepare()
    return path


@pytest.fixture
def smoke_config(data_dir):
    from configs import smoke

    config = smoke.get_config()
    config.data_dir = data_dir
    return config


def restore_run(workdir, config):
    """(training state, best model variables, loop progress) of the newest checkpoint of a
    run of `config` in `workdir` (the templates come from the config's model)."""
    import jax

    from brainjax import checkpoint, models
    from brainjax import state as state_lib

    model = models.create_model(config.model, 4)
    template, _, _ = state_lib.create_train_state(config, model, 4, jax.random.key(0), 1)
    ckpt = checkpoint.Checkpoints(workdir)
    try:
        return ckpt.restore(template, {"params": template.params, "batch_stats": template.batch_stats})
    finally:
        ckpt.close()


@pytest.fixture(scope="session")
def one_epoch_run(tmp_path_factory, data_dir):
    """(workdir, config) of a finished 1-epoch smoke run trained with
    model.standardize=none (a model field without parameters) and checkpoints at steps
    11 and 22. Shared by the restore-safety and run-config tests: copy it before
    changing it."""
    from brainjax import train
    from configs import smoke

    config = smoke.get_config()
    config.data_dir = data_dir
    config.num_epochs = 1
    config.checkpoint_every_steps = 11
    config.model.standardize = "none"
    config.eval.corruptions, config.eval.severities = ("gaussian_noise",), (3,)
    workdir = str(tmp_path_factory.mktemp("one_epoch") / "run")
    train.train_and_evaluate(config, workdir)
    return workdir, config


@pytest.fixture(scope="session")
def scan_files(tmp_path_factory):
    """Real image files on disk: phantom slices as PNG and JPEG, two of them noisy."""
    import numpy as np
    from PIL import Image

    from brainjax.data import phantom

    folder = tmp_path_factory.mktemp("scans")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(8):
        pixels = phantom.generate_slice(20, i, i % 4, 64)[..., 0].astype(np.float32)
        if i >= 6:
            pixels = np.clip(pixels + rng.normal(0, 60, pixels.shape), 0, 255)
        path = folder / (f"scan{i}.png" if i % 2 else f"scan{i}.jpg")
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        paths.append(str(path))
    return paths
