"""Restore never deletes work (issue 21): fault injection into orbax's restore and into
the files themselves. Every test asserts that no checkpoint file or step directory was
removed, and that the error is one `brainjax: error:` line."""

import json
import logging
import os
import shutil

import orbax.checkpoint as ocp
import pytest

from brainjax import checkpoint, run

SPE = 22  # steps per epoch of the smoke config (720 training images, batch 32)
EVERY = 11  # checkpoint_every_steps: two steps per epoch


def _files(workdir):
    """{relative path: size} of every file under <workdir>/checkpoints, renames followed:
    a step set aside as `<step>.unreadable` keeps its files under the new name."""
    root = os.path.join(workdir, "checkpoints")
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            step, _, rest = rel.partition(os.sep)
            out[(step.split(".unreadable")[0], rest)] = os.path.getsize(os.path.join(dirpath, name))
    return out


def _steps(workdir):
    return sorted(d for d in os.listdir(os.path.join(workdir, "checkpoints")))


def _error_lines(capsys):
    err = capsys.readouterr().err
    return [l for l in err.splitlines() if l.startswith("brainjax: error:")], err


@pytest.fixture
def run_copy(one_epoch_run, tmp_path):
    workdir, config = one_epoch_run
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    return copy, config.copy_and_resolve_references()


def _raise_io_error(self, step, *args, **kwargs):
    raise OSError(5, "Input/output error")


@pytest.mark.parametrize("mode", ["evaluate", "train"])
def test_transient_read_error_stops_with_one_line_and_keeps_every_step(run_copy, monkeypatch, capsys, caplog,
                                                                     mode):
    workdir, config = run_copy
    config.num_epochs = 2  # in train mode there is work left: it must not start it from scratch
    before, steps_before = _files(workdir), _steps(workdir)
    metrics_before = open(os.path.join(workdir, "metrics.jsonl")).read()
    report_before = open(os.path.join(workdir, "report.json")).read()
    with monkeypatch.context() as m:
        m.setattr(ocp.CheckpointManager, "restore", _raise_io_error)
        assert run.main(config, workdir, mode) == 1
    lines, err = _error_lines(capsys)
    assert len(lines) == 1, err[-3000:]
    assert f"could not read checkpoint step {2 * EVERY}" in lines[0] and "Input/output error" in lines[0]
    assert "No checkpoint file was changed" in lines[0]
    assert _files(workdir) == before and _steps(workdir) == steps_before == ["11", "22"]
    assert open(os.path.join(workdir, "metrics.jsonl")).read() == metrics_before  # no training happened
    assert open(os.path.join(workdir, "report.json")).read() == report_before

    # the same command without the fault resumes from the newest step
    caplog.set_level(logging.INFO, logger="brainjax")
    assert run.main(config, workdir, "train") == 0
    err = caplog.text
    assert f"resuming from {os.path.join(workdir, 'checkpoints')} at step {2 * EVERY}" in err
    assert "44" in _steps(workdir)


@pytest.mark.parametrize("error", [MemoryError(), PermissionError(13, "Permission denied"),
                                   ValueError("UNAVAILABLE: some storage message orbax never used before")])
def test_only_a_positive_corruption_report_sets_a_step_aside(error):
    """The classifier: what is not positively a damaged file is an error that keeps files."""
    assert checkpoint.classify_restore_error(error) == checkpoint.ERROR
    assert checkpoint.classify_restore_error(
        ValueError('DATA_LOSS: Error reading "a/0": Error decoding manifest')) == checkpoint.CORRUPT
    assert checkpoint.classify_restore_error(json.JSONDecodeError("Unterminated string", "{", 1)) == \
        checkpoint.CORRUPT


def _truncate_step(workdir, step):
    for dirpath, _, names in os.walk(os.path.join(workdir, "checkpoints", str(step))):
        for name in names:
            with open(os.path.join(dirpath, name), "r+b") as f:
                f.truncate(max(os.path.getsize(f.name) // 3, 1))


def test_truncated_newest_step_is_set_aside_not_removed(run_copy, caplog):
    workdir, config = run_copy
    _truncate_step(workdir, 2 * EVERY)
    before = _files(workdir)
    assert run.main(config, workdir, "evaluate") == 0
    err = caplog.text
    assert f"checkpoint step {2 * EVERY}" in err and "set aside as" in err, err[-3000:]
    assert _steps(workdir) == ["11", "22.unreadable"]
    assert _files(workdir) == before  # every file still there, under the new name
    report = json.load(open(os.path.join(workdir, "report.json")))
    assert report["num_examples"] == 120  # evaluated from step 11


def test_every_step_unreadable_is_an_error_and_never_a_fresh_start(run_copy, capsys):
    workdir, config = run_copy
    config.num_epochs = 2
    for step in (EVERY, 2 * EVERY):
        _truncate_step(workdir, step)
    before = _files(workdir)
    metrics_before = open(os.path.join(workdir, "metrics.jsonl")).read()
    for attempt in range(2):  # the rerun, with every step already set aside, refuses too
        assert run.main(config, workdir, "train") == 1
        lines, err = _error_lines(capsys)
        assert len(lines) == 1 and "no readable checkpoint" in lines[0], err[-3000:]
        assert "11.unreadable" in lines[0] and "22.unreadable" in lines[0]
        assert _steps(workdir) == ["11.unreadable", "22.unreadable"]
        assert _files(workdir) == before
        assert open(os.path.join(workdir, "metrics.jsonl")).read() == metrics_before


def test_torn_metrics_line_does_not_block_resume(run_copy, caplog):
    workdir, config = run_copy
    config.num_epochs = 2
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path, "a") as f:
        f.write('{"kind": "train_window", "step": 23, "epo')  # kill -9 during an append
    assert run.main(config, workdir, "train") == 0
    assert "dropping a torn last line" in caplog.text
    records = [json.loads(l) for l in open(path)]  # every line parses
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    keys = [(r["kind"], r["step"]) for r in records]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("background", [True, False])
def test_failed_save_is_one_line_and_keeps_every_earlier_step(run_copy, monkeypatch, capsys, background):
    """An OSError from orbax's save (full or flaky storage) at step 33, mid epoch 2: with
    the background handover (one process) it surfaces at the next save; on the training
    thread (several processes) at once. Either way one error line naming the step, every
    earlier file in place, and the same command resumes from the newest saved step."""
    workdir, config = run_copy
    config.num_epochs = 2
    config.eval.corruptions = ()  # evaluation is not under test here: the clean pass only
    before = _files(workdir)
    real_save, real_init = ocp.CheckpointManager.save, checkpoint.Checkpoints.__init__

    def failing_save(self, step, *args, **kwargs):
        if step == 3 * EVERY:
            raise OSError(28, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(ocp.CheckpointManager, "save", failing_save)
        m.setattr(checkpoint.Checkpoints, "__init__",
                  lambda self, *a, **kw: real_init(self, *a, **{**kw, "background": background}))
        assert run.main(config, workdir, "train") == 1
    lines, err = _error_lines(capsys)
    assert len(lines) == 1, err[-3000:]
    assert f"saving checkpoint step {3 * EVERY}" in lines[0] and "No space left on device" in lines[0], lines[0]
    assert "rerun the same command to resume" in lines[0]
    assert _steps(workdir) == ["11", "22"] and _files(workdir) == before
    if background:  # resuming after the error is the same path for both handovers: once
        assert run.main(config, workdir, "train") == 0
        assert "44" in _steps(workdir)
