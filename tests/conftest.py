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
# already is used as it is.
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


def built_once(tmp_path_factory, worker_id: str, name: str, build) -> str:
    """A directory `build(path)` fills once per test session, whichever pytest-xdist worker
    asks first; the others wait on a file lock and use it (session fixtures are otherwise
    per worker, so each worker would train the same run again). A build that raised is
    set aside (renamed, not removed) and the next asker builds again."""
    import filelock

    if worker_id == "master":  # no xdist: one process, an ordinary session directory
        path = str(tmp_path_factory.mktemp(name))
        build(path)
        return path
    root = tmp_path_factory.getbasetemp().parent  # shared by every worker of this session
    path, done = root / name, root / f"{name}.done"
    with filelock.FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            if path.exists():
                path.rename(root / f"{name}.failed-{os.getpid()}-{len(os.listdir(root))}")
            path.mkdir()
            build(str(path))
            done.touch()
    return str(path)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, worker_id):
    """tfds data_dir with `brain_phantom/small` built once per session (read-only)."""

    def build(path):
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
        import tensorflow_datasets as tfds

        import brainjax.data.builders  # noqa: F401

        tfds.builder("brain_phantom/small", data_dir=path).download_and_prepare()

    return built_once(tmp_path_factory, worker_id, "tfds", build)


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


def one_epoch_config(data_dir):
    """one_epoch_run's config."""
    from configs import smoke

    config = smoke.get_config()
    config.data_dir = data_dir
    config.num_epochs = 1
    config.checkpoint_every_steps = 11
    config.model.standardize = "none"
    config.eval.corruptions, config.eval.severities = ("gaussian_noise",), (3,)
    return config


@pytest.fixture(scope="session")
def one_epoch_run(tmp_path_factory, worker_id, data_dir):
    """(workdir, config) of a finished 1-epoch smoke run trained with
    model.standardize=none (a model field without parameters) and checkpoints at steps
    11 and 22; trained once per session for all workers. Shared by the restore-safety,
    run-config, parallel-mode, TensorBoard and non-finite-loss tests: read it, or copy it
    before changing it."""
    from brainjax import train

    config = one_epoch_config(data_dir)
    root = built_once(tmp_path_factory, worker_id, "one_epoch",
                      lambda path: train.train_and_evaluate(config, os.path.join(path, "run")))
    return os.path.join(root, "run"), config


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
