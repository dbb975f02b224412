"""Step functions: frozen partitions, FLOPs, pmap == single device, determinism."""

import functools
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from brainjax import loop as loop_lib
from brainjax import models, parallel, partition, steps
from brainjax import state as state_lib
from configs import smoke

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup(trainable=(".*",), tiny=None, head="baseline", size=32, degrade_cfg=None):
    config = smoke.get_config()
    config.image_size = size
    config.model.head = head
    if tiny is not None:
        config.model.tiny = tiny
    config.trainable = trainable
    model = models.create_model(config.model, 4)
    state, tx, labels = state_lib.create_train_state(config, model, 4, jax.random.key(0), steps_per_epoch=10)
    step = functools.partial(steps.train_step, model=model, tx=tx, label_tree=labels,
                             degrade_cfg=degrade_cfg if degrade_cfg is not None else {"recipe": "none"})
    return config, model, state, step, labels


def _batch(n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8),
            "label": rng.integers(0, 4, (n,)).astype(np.int32)}


def _flops(fn, *args):
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


# Slow tier (suite-time budget, issue 11): `pytest -m slow` runs it; the tiny CNN runs by default.
@pytest.mark.parametrize("backbone", ["tiny", pytest.param("vgg16", marks=pytest.mark.slow)])
def test_frozen_base_step_costs_about_one_forward(backbone):
    """The frozen step differentiates only the head: its FLOPs ~ the forward pass, while
    fine-tuning everything costs the usual ~3x (XLA cost analysis of the compiled steps)."""
    config = smoke.get_config()
    config.model.head = "enhanced"
    if backbone == "vgg16":
        config.model.backbone = "vgg16"
    model = models.create_model(config.model, 4)
    batch = _batch(8)

    def step_flops(trainable):
        config.trainable = trainable
        state, tx, labels = state_lib.create_train_state(config, model, 4, jax.random.key(0), 10)
        step = functools.partial(steps.train_step, model=model, tx=tx, label_tree=labels, degrade_cfg={})
        return state, _flops(lambda s, b: step(s, b, jax.random.key(0)), state, batch)

    state, frozen = step_flops(("^head/",))
    forward = _flops(lambda s, b: model.apply({"params": s.params}, steps.to_float_images(b["image"])), state, batch)
    _, full = step_flops((".*",))
    assert frozen / forward < 1.2, (frozen, forward)
    assert full / forward > 2.0, (full, forward)


def test_frozen_params_bit_identical_and_no_optimizer_state():
    _, _, state, step, labels = _setup(trainable=("^head/",), head="enhanced")
    jstep = jax.jit(step)
    new = state
    for i in range(3):
        new, metrics = jstep(new, _batch(16, seed=i), jax.random.key(0))
    old_flat = traverse_util.flatten_dict(state.params)
    new_flat = traverse_util.flatten_dict(jax.device_get(new.params))
    for k, v in old_flat.items():
        if k[0] == "backbone":
            np.testing.assert_array_equal(v, new_flat[k])
        else:
            assert not np.array_equal(v, new_flat[k]), k  # the head did train
    # optax.partition: the frozen branch (set_to_zero) holds no state, so Adam moments
    # cover only the head.
    opt_leaves = sum(x.size for x in jax.tree.leaves(state.opt_state))
    head_size = partition.count(partition.split(state.params, labels)[0])
    assert opt_leaves <= 2 * head_size + 8


def test_pmap_step_equals_single_device_step():
    """Same global batch on 8 devices (pmean) vs 1 device: same new params and metrics.
    Degradation is on: per-example keys come from global indices."""
    assert jax.local_device_count() == 8
    cfg = {"flip_lr": True, "recipe": "chain", "prob": 0.7, "gaussian_noise": (0.05, 0.2),
           "gaussian_blur": (1.0, 4.0), "downsample": (0.3, 0.8)}
    _, _, state, step, _ = _setup(degrade_cfg=cfg)
    batch = _batch(32)
    single, m1 = jax.jit(step)(state, batch, jax.random.key(5))
    pstep = parallel.compiled_step(step)
    sharded = jax.tree.map(lambda x: x.reshape(8, 4, *x.shape[1:]), batch)
    multi, m8 = pstep(parallel.replicate(state), parallel.shard(sharded), jax.random.key(5))
    multi = parallel.unreplicate(multi)
    for a, b in zip(jax.tree.leaves(jax.device_get(single.params)), jax.tree.leaves(multi.params)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(float(m1["loss_sum"]), float(np.asarray(m8["loss_sum"])[0]), rtol=1e-5)
    assert float(m1["count"]) == float(np.asarray(m8["count"])[0]) == 32


def test_step_is_deterministic_per_rng_and_step():
    cfg = {"recipe": "chain", "prob": 1.0, "gaussian_noise": (0.05, 0.2)}
    _, _, state, step, _ = _setup(degrade_cfg=cfg, head="enhanced")
    jstep = jax.jit(step)
    a, _ = jstep(state, _batch(8), jax.random.key(1))
    b, _ = jstep(state, _batch(8), jax.random.key(1))
    c, _ = jstep(state, _batch(8), jax.random.key(2))
    la, lb, lc = (jax.tree.leaves(jax.device_get(s.params)) for s in (a, b, c))
    assert all(np.array_equal(x, y) for x, y in zip(la, lb))
    assert not all(np.array_equal(x, y) for x, y in zip(la, lc))


def test_partition_errors_are_clear():
    from brainjax.errors import UserError

    params = {"backbone": {"c": {"kernel": np.zeros(2)}}, "head": {"logits": {"kernel": np.zeros(2)}}}
    with pytest.raises(UserError, match="match no parameter"):
        partition.labels(params, ["^haed/"])
    labels = partition.labels(params, ["^head/"])
    assert labels == {"backbone": {"c": {"kernel": "frozen"}}, "head": {"logits": {"kernel": "trainable"}}}


# Slow tier (suite-time budget, issue 11): `pytest -m slow` runs it; the benchmark's CPU path (the GPU path
# runs by default, test_benchmark_gpu_mode_runs_on_the_cpu_backend).
@pytest.mark.slow
def _benchmark_module():
    """benchmarks/benchmark.py (outside the package), imported from its folder."""
    import importlib
    import sys

    folder = os.path.join(ROOT, "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module("benchmark")


def test_benchmark_measures_tiny_model():
    """benchmarks/benchmark.py's building blocks on a tiny model (the full run is a benchmark)."""
    benchmark = _benchmark_module()

    r = benchmark.flax_rates("tiny", 32, 8, repeats=1)
    assert {"frozen_img_s", "finetune_img_s", "eval_img_s"} <= set(r)
    assert r["finetune_flops_per_img"] > 2 * r["forward_flops_per_img"]
    assert r["frozen_flops_per_img"] < r["finetune_flops_per_img"]


# Slow tier (suite-time budget, issue 11): `pytest -m slow` runs it; the benchmark's seed-protocol comparison.
@pytest.mark.slow
def test_benchmark_seed_protocol_end_to_end_small():
    """The measured seed-protocol comparison runs both frameworks on the same inputs."""
    pytest.importorskip("keras")
    benchmark = _benchmark_module()

    r = benchmark.seed_protocol_end_to_end(n_images=8, size=32, epochs=2, batch=4, with_keras=True)
    assert r["inputs_per_epoch"] == 16
    assert r["brainjax_cached_seconds"] > 0 and r["keras_default_seconds"] > 0
    assert r["speedup_vs_keras"] == pytest.approx(r["keras_default_seconds"] / r["brainjax_cached_seconds"])


def test_benchmark_gpu_mode_runs_on_the_cpu_backend(monkeypatch, tmp_path):
    """The one-call GPU script's code path (bf16, batch 256, no Keras/TF parts), shrunk to
    the tiny CNN (bf16 convolutions are emulated, slowly, on the CPU backend)."""
    import json

    benchmark = _benchmark_module()

    monkeypatch.setattr(benchmark, "_settings", lambda args: ([("tiny", 32)], [("tiny", 32)], {}))
    monkeypatch.setattr(benchmark, "pipeline_rate", lambda *a: None)
    out = tmp_path / "b.json"
    result = benchmark.main(["--gpu", "--no_torch", "--repeats", "1", "--matmul_n", "256", "--out", str(out)])
    assert result["dtype"] == "bfloat16" and result["batch"] == 256
    row = json.loads(out.read_text())["brainjax"]["tiny@32"]
    # the frozen step computes no backbone gradient: fewer FLOPs than fine-tuning, more than
    # the forward pass; no measured rate implies more than the measured matmul peak
    assert row["forward_flops_per_img"] < row["frozen_flops_per_img"] < row["finetune_flops_per_img"]
    assert row["frozen_peak_fraction"] <= 1.0
    assert result["frozen_step_ratio_vs_keras"] is None  # no Keras on the GPU path


def test_torch_baseline_when_installed():
    pytest.importorskip("torch")
    _benchmark_module()
    import baselines

    r = baselines.torch_rates(32, 4, 1, compile_modes=(False,))
    assert r["torch_eager_frozen_img_s"] > 0 and r["torch_eager_finetune_img_s"] > 0


def test_bfloat16_compute_keeps_float32_params():
    config = smoke.get_config()
    config.model.dtype = "bfloat16"
    model = models.create_model(config.model, 4)
    state, tx, labels = state_lib.create_train_state(config, model, 4, jax.random.key(0), 10)
    step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, label_tree=labels, degrade_cfg={}))
    new, m = step(state, _batch(8), jax.random.key(0))
    assert np.isfinite(float(m["loss_sum"]))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new.params))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new.opt_state) if hasattr(x, "dtype") and x.ndim)


def test_reduce_on_plateau_and_early_stopping_follow_keras_semantics():
    config = smoke.get_config()
    config.schedule.update(name="plateau", patience=2, factor=0.5, min_delta=0.0, min_lr=1e-4)
    config.early_stopping.update(enabled=True, patience=3, min_delta=0.0)
    config.optimizer.learning_rate = 1e-3
    loop = loop_lib.new_progress()
    scales, stops = [], []
    for epoch, val in enumerate([1.0, 0.9, 0.95, 0.95, 0.95, 0.8]):
        loop["epoch"] = epoch
        loop_lib.Plateau.update(loop, val, config)
        scales.append(loop["lr_scale"])
        stops.append(loop["stop"])
    # two epochs without improvement -> halve; third bad epoch -> stop
    assert scales[:4] == [1.0, 1.0, 1.0, 0.5]
    assert stops == [False, False, False, False, True, False]  # the loop ends at the first True
    assert loop["best_val_loss"] == 0.8 and loop["best_epoch"] == 5


def test_cosine_schedule_and_label_smoothing_train():
    config = smoke.get_config()
    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = 1
    config.optimizer.label_smoothing = 0.1
    model = models.create_model(config.model, 4)
    state, tx, labels = state_lib.create_train_state(config, model, 4, jax.random.key(0), steps_per_epoch=5)
    step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, label_tree=labels, degrade_cfg={},
                                     label_smoothing=0.1))
    first, _ = step(state, _batch(8), jax.random.key(0))  # warm-up starts at lr 0: no change
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(jax.device_get(first.params))):
        np.testing.assert_array_equal(a, b)
    second, m = step(first, _batch(8), jax.random.key(0))
    assert np.isfinite(float(m["loss_sum"]))
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(jax.device_get(first.params)),
                                                          jax.tree.leaves(jax.device_get(second.params))))
    # what the log and metrics.jsonl report: the schedule's value, not the base rate
    lr = config.optimizer.learning_rate
    total = config.num_epochs * 5
    assert state_lib.learning_rate_at(config, 5, 0, 1.0) == 0.0
    assert state_lib.learning_rate_at(config, 5, 5, 1.0) == pytest.approx(lr)
    assert lr > state_lib.learning_rate_at(config, 5, 7, 1.0) > state_lib.learning_rate_at(config, 5, 9, 1.0) > 0
    assert state_lib.learning_rate_at(config, 5, total, 1.0) == pytest.approx(0.0, abs=1e-9)
    config.schedule.name = "plateau"
    assert state_lib.learning_rate_at(config, 5, total - 1, 0.25) == pytest.approx(0.25 * lr)


@pytest.mark.parametrize("name", sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                                        if not p.endswith("__init__.py")))
def test_every_config_file_builds(name):
    """Each configs/*.py returns a ConfigDict with the keys the engine reads."""
    import importlib

    c = importlib.import_module(f"configs.{name}").get_config()
    for key in ("dataset", "image_size", "batch_size", "model", "trainable", "train_degrade", "eval", "feature_cache"):
        assert key in c, (name, key)
    if c.feature_cache:
        assert c.trainable == ("^head/",) and c.train_degrade.recipe == "none" and not c.train_degrade.flip_lr


def test_importing_brainjax_leaves_xla_flags_settable():
    """XLA reads XLA_FLAGS when the backend starts; no brainjax import may start it, or the
    launcher's / benchmark's flags (brainjax/xla_flags.py) would silently not apply."""
    import subprocess
    import sys

    code = ("import os; import brainjax.train, brainjax.feature_cache, brainjax.evaluators, brainjax.report, brainjax.loop, "
            "brainjax.run; os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=3'; "
            "import jax; print(len(jax.devices()))")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "3", out.stderr[-2000:]


def test_synced_batchnorm_step_does_not_depend_on_the_device_split():
    """BatchNorm with the pmap axis: 8 devices x 4 examples give the loss, parameters and
    batch statistics of 1 device x 32 (the model trains BatchNorm, no dropout)."""
    tiny = {"widths": (8, 16), "convs_per_block": 1, "batchnorm": True}
    config = smoke.get_config()
    config.model.tiny, config.model.base_batchnorm_train, config.model.dropout = tiny, True, 0.0
    # Unstandardised input: with z-scored input one or two first-layer weights come out
    # 2 x lr apart. Adam's first step is +-lr, and their gradients sit at float-rounding
    # level, so summation order decides the sign. It is not BatchNorm's one-pass variance:
    # the two-pass one (use_fast_variance=False) fails the same way, and its variance
    # error here is 4e-7 vs 9e-8 (measured on this test).
    config.model.standardize = "none"
    plain = models.create_model(config.model, 4)
    synced = models.create_model(config.model, 4, bn_axis_name=parallel.AXIS)
    state, tx, labels = state_lib.create_train_state(config, plain, 4, jax.random.key(0), 10)
    kw = dict(tx=tx, label_tree=labels, degrade_cfg={"recipe": "none"})
    batch = _batch(32)
    single, m1 = jax.jit(functools.partial(steps.train_step, model=plain, **kw))(state, batch, jax.random.key(3))
    pstep = parallel.compiled_step(functools.partial(steps.train_step, model=synced, **kw))
    sharded = jax.tree.map(lambda x: x.reshape(8, 4, *x.shape[1:]), batch)
    multi, m8 = pstep(parallel.replicate(state), parallel.shard(sharded), jax.random.key(3))
    multi = parallel.unreplicate(multi)
    np.testing.assert_allclose(float(m1["loss_sum"]), float(np.asarray(m8["loss_sum"])[0]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(jax.device_get((single.params, single.batch_stats))),
                    jax.tree.leaves((multi.params, multi.batch_stats))):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    # without the axis each device normalises its own 4 examples: a different step
    unsynced = parallel.compiled_step(functools.partial(steps.train_step, model=plain, **kw))
    _, m8u = unsynced(parallel.replicate(state), parallel.shard(sharded), jax.random.key(3))
    assert abs(float(m1["loss_sum"]) - float(np.asarray(m8u["loss_sum"])[0])) > 1e-3


def test_frozen_base_keeps_its_batchnorm_statistics(smoke_config, tmp_path):
    """trainable=('^head/',) with base_batchnorm_train=True: the base's BatchNorm runs in
    inference mode, so its statistics (and parameters) stay exactly as initialised."""
    from brainjax import checkpoint, train

    smoke_config.model.tiny.batchnorm, smoke_config.model.base_batchnorm_train = True, True
    smoke_config.trainable, smoke_config.num_epochs, smoke_config.eval.corruptions = ("^head/",), 1, ()
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(smoke_config, workdir)
    model = models.create_model(smoke_config.model, 4)
    first = jax.random.split(jax.random.key(smoke_config.seed), 3)[0]
    init, _, _ = state_lib.create_train_state(smoke_config, model, 4, first, 1)
    ckpt = checkpoint.Checkpoints(workdir)
    try:
        trained, _, _ = ckpt.restore(init, {"params": init.params, "batch_stats": init.batch_stats})
    finally:
        ckpt.close()
    assert int(trained.step) > 0 and jax.tree.leaves(init.batch_stats)
    for a, b in zip(jax.tree.leaves((init.batch_stats, init.params["backbone"])),
                    jax.tree.leaves((trained.batch_stats, trained.params["backbone"]))):
        np.testing.assert_array_equal(a, b)
