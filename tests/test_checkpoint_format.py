"""The checkpoint format (orbax's cost is per array): a step holds one array per dtype
and a layout, restores exactly, refuses another model by name even when the sizes add
up, and a step an older brainjax wrote is one line saying so."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from brainjax import checkpoint, flat_tree


def _tree(seed=0, kernel_shape=(4, 8)):
    r = np.random.default_rng(seed)
    return {"params": {"dense": {"kernel": r.normal(size=kernel_shape).astype(np.float32),
                                 "bias": r.normal(size=(8,)).astype(np.float32)},
                       "scale": np.float32(r.normal())},
            "batch_stats": {},  # an empty node (models without BatchNorm) survives the round trip
            "count": np.int32(r.integers(100)), "mask": r.integers(0, 2, size=(3,)).astype(bool)}


def _files(root):
    return sorted((os.path.relpath(os.path.join(d, n), root), os.path.getsize(os.path.join(d, n)))
                  for d, _, names in os.walk(root) for n in names)


def _save(workdir, step, state, best):
    ckpt = checkpoint.Checkpoints(workdir)
    try:
        ckpt.save(step, state, best, {"epoch": step})
        ckpt.wait()
    finally:
        ckpt.close()


def _restore(workdir, state_template, best_template):
    ckpt = checkpoint.Checkpoints(workdir)
    try:
        return ckpt.restore(state_template, best_template)
    finally:
        ckpt.close()


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("on_device", [False, True])
def test_flat_step_holds_one_array_per_dtype_and_restores_exactly(tmp_path, on_device):
    state, best = _tree(0), _tree(1)["params"]
    given = jax.tree.map(jax.numpy.asarray, state) if on_device else state
    _save(str(tmp_path), 5, given, best)
    step_dir = tmp_path / "checkpoints" / "5"
    assert sorted(p.name for p in step_dir.iterdir() if p.is_dir()) == ["flat", "meta"]
    manager = ocp.CheckpointManager(str(tmp_path / "checkpoints"))
    raw = manager.restore(5, args=ocp.args.Composite(flat=ocp.args.StandardRestore()))["flat"]
    manager.close()
    assert sorted(raw["state"]) == ["bool", "float32", "int32"]  # 6 leaves, 3 arrays
    assert raw["state"]["float32"].shape == (4 * 8 + 8 + 1,)
    assert sorted(raw["best"]) == ["float32"] and raw["best"]["float32"].shape == (4 * 8 + 8 + 1,)
    restored_state, restored_best, loop = _restore(str(tmp_path), _tree(7), _tree(8)["params"])
    _assert_same(restored_state, state)
    _assert_same(restored_best, best)
    assert loop == {"epoch": 5}


def test_an_unchanged_best_is_flattened_once_and_a_new_best_is_saved(tmp_path, monkeypatch):
    flattened = []
    real_flatten = flat_tree.flatten
    monkeypatch.setattr(flat_tree, "flatten", lambda tree: flattened.append(tree) or real_flatten(tree))
    state, best_a, best_b = _tree(0), _tree(1)["params"], _tree(2)["params"]
    ckpt = checkpoint.Checkpoints(str(tmp_path), keep=3)
    try:
        for step, best in ((1, best_a), (2, best_a), (3, best_b)):
            ckpt.save(step, state, best, {"epoch": step})
            ckpt.wait()
            if step == 2:  # the same object twice: flattened once, and the step holds it
                assert sum(t is best_a for t in flattened) == 1
                _assert_same(ckpt.restore_best(_tree(8)["params"])[0], best_a)
        assert sum(t is best_b for t in flattened) == 1
        _assert_same(ckpt.restore_best(_tree(8)["params"])[0], best_b)
    finally:
        ckpt.close()


def test_another_model_with_the_same_sizes_is_refused_by_leaf_name(tmp_path):
    """A (8, 4) kernel where the checkpoint has (4, 8): the flat float32 array has the
    same length, so only the stored layout can tell. The error names the leaf and no
    file changes."""
    _save(str(tmp_path), 3, _tree(0), _tree(0)["params"])
    before = _files(str(tmp_path))
    other = _tree(0, kernel_shape=(8, 4))
    with pytest.raises(checkpoint.CheckpointError) as err:
        _restore(str(tmp_path), other, other["params"])
    message = str(err.value)
    assert "holds a different model" in message and "['params']['dense']['kernel']" in message, message
    assert "[4, 8]" in message and "[8, 4]" in message, message
    assert _files(str(tmp_path)) == before


@pytest.mark.parametrize("items", ["four items", "a tree per item"])
def test_a_step_an_older_brainjax_wrote_is_one_line_and_changes_nothing(tmp_path, items):
    """Steps in the formats earlier versions wrote (four items; or `state` / `best` as
    orbax trees, one array per leaf) are refused with one line, before and at restore."""
    from brainjax import preflight

    old = _tree(0)
    manager = ocp.CheckpointManager(str(tmp_path / "checkpoints"))  # the earlier writers, as they were
    if items == "four items":
        args = ocp.args.Composite(state_flat=ocp.args.StandardSave(flat_tree.flatten(old)),
                                  best_flat=ocp.args.StandardSave(flat_tree.flatten(old["params"])),
                                  layout=ocp.args.JsonSave({"state": flat_tree.layout_of(old)}),
                                  loop=ocp.args.JsonSave({"epoch": 1}))
    else:
        args = ocp.args.Composite(state=ocp.args.StandardSave(old), best=ocp.args.StandardSave(old["params"]),
                                  loop=ocp.args.JsonSave({"epoch": 1}))
    manager.save(1, args=args)
    manager.wait_until_finished()
    manager.close()
    before = _files(str(tmp_path))
    for attempt in (lambda: _restore(str(tmp_path), _tree(9), _tree(9)["params"]),
                    lambda: preflight.saved_record(str(tmp_path))):
        with pytest.raises(checkpoint.CheckpointError, match="written by an older brainjax") as err:
            attempt()
        assert "\n" not in str(err.value)
    assert _files(str(tmp_path)) == before


def test_a_truncated_layout_sets_the_step_aside_and_uses_the_previous(tmp_path, caplog):
    _save(str(tmp_path), 1, _tree(0), _tree(0)["params"])
    _save(str(tmp_path), 2, _tree(1), _tree(1)["params"])
    layout_dir = tmp_path / "checkpoints" / "2" / "meta"  # the layout's JSON
    for f in layout_dir.rglob("*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[: max(len(f.read_bytes()) // 3, 1)])
    restored_state, _, loop = _restore(str(tmp_path), _tree(9), _tree(9)["params"])
    _assert_same(restored_state, _tree(0))
    assert loop == {"epoch": 1}
    assert (tmp_path / "checkpoints" / "2.unreadable").is_dir() and "set aside" in caplog.text


def test_a_typed_prng_key_in_the_state_is_refused_by_name():
    """Key arrays cannot be concatenated with numbers: the save names the leaf instead of
    failing deep inside jnp.concatenate."""
    with pytest.raises(TypeError, match=r"\['rng'\] is a typed PRNG key"):
        flat_tree.flatten({"rng": jax.random.key(0), "w": np.zeros(3, np.float32)})
