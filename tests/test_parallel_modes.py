"""config.parallel: the jit + shard_map path trains and evaluates the same model as the
pmap path (issue 23). Both run the same per-device step function on the same
per-device batch with the same collectives; only the array layout differs (state with a
leading device axis vs one global replicated array; batches [devices, per_device] vs
one global batch sharded over the mesh)."""

import functools
import json
import os

import jax
import numpy as np
import pytest

from brainjax import checkpoint, flat_tree, models, parallel, steps
from brainjax import state as state_lib
from configs import smoke


def _bn_step():
    """A BatchNorm model (statistics synchronised over the axis), dropout and on-device
    degradation: every collective and rng path of the training step."""
    config = smoke.get_config()
    config.model.tiny.batchnorm = True
    config.model.base_batchnorm_train = True
    config.model.dropout = 0.3
    model = models.create_model(config.model, 4, bn_axis_name=parallel.AXIS)
    plain = models.create_model(config.model, 4)
    state, tx, labels = state_lib.create_train_state(config, plain, 4, jax.random.key(0), steps_per_epoch=10)
    degrade_cfg = {"recipe": "chain", "prob": 0.7, "gaussian_noise": (0.05, 0.2), "downsample": (0.3, 0.8)}
    step = functools.partial(steps.train_step, model=model, tx=tx, label_tree=labels, degrade_cfg=degrade_cfg)
    return state, step


def _batches(count, n=32, size=32):
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        batch = {"image": rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8),
                 "label": rng.integers(0, 4, (n,)).astype(np.int32), "index": np.arange(i * n, (i + 1) * n, dtype=np.int32)}
        out.append(jax.tree.map(lambda x: x.reshape(8, n // 8, *x.shape[1:]), batch))
    return out


def _train(mode, state, step, batches):
    with parallel.using(mode):
        fn = parallel.compiled_step(step, donate_state=True)
        rstate, losses = parallel.replicate(state), []
        for batch in batches:
            rstate, metrics = fn(rstate, parallel.shard(batch), jax.random.key(3))
            losses.append(float(parallel.first_device(metrics)["loss_sum"]))
        host = parallel.unreplicate(rstate)
        saved = jax.device_get(parallel.checkpoint_copy(rstate))
    return host, losses, saved


def test_jit_mode_step_equals_pmap_step_bit_for_bit():
    """Four donated training steps on 8 devices: identical parameters, BatchNorm
    statistics, optimizer state and losses (compared exactly: the same per-device
    programs and the same all-reduces, so not a float of difference is expected), and the
    checkpoint copy of each mode is that state."""
    assert jax.local_device_count() == 8
    state, step = _bn_step()
    batches = _batches(4)
    p_state, p_losses, p_saved = _train("pmap", state, step, batches)
    j_state, j_losses, j_saved = _train("jit", state, step, batches)
    assert p_losses == j_losses
    for a, b, c, d in zip(jax.tree.leaves(p_state), jax.tree.leaves(j_state), jax.tree.leaves(p_saved),
                          jax.tree.leaves(j_saved)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(a, d)
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(p_state.params))]
    assert all(moved)  # every parameter trained: the comparison is not of untouched values


def _one_donating_step(state, step, batch):
    """(the compiled state-donating step, the replicated state after one step of it), in
    the current parallel mode."""
    fn = parallel.compiled_step(step, donate_state=True)
    return fn, fn(parallel.replicate(state), parallel.shard(batch), jax.random.key(3))[0]


def test_checkpoint_copy_is_a_replicated_device_array_that_outlives_donation(tmp_path):
    """What the loop hands orbax: global device arrays replicated over every device (no
    host copy), still valid after the next step donated the state they were copied
    from; they save and restore (with the target sharding) to the same values."""
    state, step = _bn_step()
    batches = _batches(2)
    for mode in parallel.MODES:
        with parallel.using(mode):
            fn, rstate = _one_donating_step(state, step, batches[0])
            copy = parallel.checkpoint_copy(rstate)
            expected = parallel.unreplicate(rstate)
            rstate, _ = fn(rstate, parallel.shard(batches[1]), jax.random.key(3))  # donates the old buffers
            for leaf in jax.tree.leaves(copy):
                assert isinstance(leaf, jax.Array) and leaf.sharding.is_fully_replicated
                assert len(leaf.sharding.device_set) == jax.device_count()
            ckpt = checkpoint.Checkpoints(str(tmp_path / mode))
            try:
                ckpt.save(1, copy, {"params": copy.params, "batch_stats": copy.batch_stats}, {"epoch": 0})
                ckpt.wait()
                restored, _, _ = ckpt.restore(state, {"params": state.params, "batch_stats": state.batch_stats})
            finally:
                ckpt.close()
            for a, b, c in zip(jax.tree.leaves(expected), jax.tree.leaves(copy), jax.tree.leaves(restored)):
                np.testing.assert_array_equal(a, np.asarray(b))
                np.testing.assert_array_equal(a, np.asarray(c))
            assert all(leaf.sharding == parallel.replicated_sharding() for leaf in jax.tree.leaves(restored))


def test_snapshot_is_the_flat_state_and_outlives_donation(tmp_path):
    """What the loop hands a save: the state's flat format computed on device in one
    dispatch, each array replicated over every device. Still the copied state after the
    next step donated its source (no output may be an input buffer passed through: the
    int32 group is the single scalar `step`), and equal to flattening the host state."""
    state, step = _bn_step()
    batches = _batches(2)
    for mode in parallel.MODES:
        with parallel.using(mode):
            fn, rstate = _one_donating_step(state, step, batches[0])
            ckpt = checkpoint.Checkpoints(str(tmp_path / mode))
            try:
                snap = ckpt.snapshot(rstate)
                expected_state = parallel.unreplicate(rstate)
                expected = flat_tree.flatten(expected_state)
                rstate, _ = fn(rstate, parallel.shard(batches[1]), jax.random.key(3))  # donates the old buffers
                assert sorted(snap.arrays) == sorted(expected) == ["float32", "int32"]
                for name, x in snap.arrays.items():
                    assert x.sharding.is_fully_replicated and len(x.sharding.device_set) == jax.device_count()
                    np.testing.assert_array_equal(np.asarray(x), expected[name])
                assert flat_tree.layout_of(snap.like) == flat_tree.layout_of(expected_state)
                moved = flat_tree.flatten(parallel.unreplicate(rstate))
                assert not np.array_equal(moved["float32"], expected["float32"])  # the next step did change it
                ckpt.save(1, snap, {"params": expected_state.params, "batch_stats": expected_state.batch_stats},
                          {"epoch": 0}, host_copy=mode == "pmap")
                ckpt.wait()
                restored, _, _ = ckpt.restore(state, {"params": state.params, "batch_stats": state.batch_stats})
            finally:
                ckpt.close()
            for a, b in zip(jax.tree.leaves(expected_state), jax.tree.leaves(restored)):
                np.testing.assert_array_equal(a, np.asarray(b))


def test_a_bad_parallel_mode_is_one_clear_error():
    from brainjax.errors import UserError

    with pytest.raises(UserError, match=r"config.parallel='shard'.*pmap, jit"):
        parallel.set_mode("shard")
    assert parallel.mode() == "pmap"


def test_jit_mode_run_equals_pmap_run(one_epoch_run, tmp_path):
    """The shared 1-epoch smoke run (pmap, 8 devices, saves from host copies: the CPU
    default) trained again with config.parallel='jit' and saves from device arrays: the
    same epoch losses, the same report and the same saved model, exactly."""
    from brainjax import train

    workdir, config = one_epoch_run
    config = config.copy_and_resolve_references()
    config.parallel, config.checkpoint_from = "jit", "device"
    jit_dir = str(tmp_path / "jit")
    train.train_and_evaluate(config, jit_dir)
    assert parallel.mode() == "pmap"  # the run's mode does not leak out of it

    def epochs(d):
        return [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl")) if '"kind": "epoch"' in l]

    def windows(d):
        return [json.loads(l)["loss"] for l in open(os.path.join(d, "metrics.jsonl")) if '"train_window"' in l]

    assert [(r["val_loss"], r["loss"]) for r in epochs(workdir)] == [(r["val_loss"], r["loss"]) for r in epochs(jit_dir)]
    assert windows(workdir) == windows(jit_dir)
    a, b = (json.load(open(os.path.join(d, "report.json"))) for d in (workdir, jit_dir))
    assert a["clean"]["confusion_matrix"] == b["clean"]["confusion_matrix"]
    assert a["degraded"] == b["degraded"]
    from conftest import restore_run

    for x, y in zip(jax.tree.leaves(restore_run(workdir, config)[:2]), jax.tree.leaves(restore_run(jit_dir, config)[:2])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_bad_checkpoint_source_is_one_clear_error():
    from brainjax.errors import UserError

    with pytest.raises(UserError, match=r"config.checkpoint_from='disk'.*auto, device, host"):
        parallel.checkpoint_source("disk")
    assert parallel.checkpoint_source("auto") == ("host" if jax.default_backend() == "cpu" else "device")
