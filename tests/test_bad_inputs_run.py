"""The bad-input table, second half: mistakes made against a trained run (resumes with a
changed field, malformed side files, predict / evaluate / export / gallery flags). The
contract of every row is tests/test_bad_inputs.py `assert_refused`; each row works on its
own copy of the session's one-epoch run."""

import json
import os

import pytest

from test_bad_inputs import _image, _user_folder, assert_refused, copy_of_run

# The one-epoch run's own settings (tests/conftest.py one_epoch_config): a resume with
# exactly these is accepted, so each row's one extra flag is what is refused.
RESUME = ["--config=configs/smoke.py", "--config.num_epochs=2", "--config.model.standardize=none"]


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _train(c, *extra):
    return ["launch.py", f"--workdir={c['run']}", *RESUME, f"--config.data_dir={c['data_dir']}", *extra]


def _predict(c, *extra, images=True):
    return ["launch.py", f"--workdir={c['run']}", "--mode=predict",
            *([f"--images={c['image']}"] if images else []), *extra]


def _evaluate(c, *extra):
    return ["launch.py", f"--workdir={c['run']}", "--mode=evaluate", f"--config.data_dir={c['data_dir']}", *extra]


def _export(c, out):
    return ["-m", "brainjax.export", f"--workdir={c['run']}", "--format=onnx", f"--out={out}"]


def _break(c, name, text):
    _write(os.path.join(c["run"], name), text)


def _report_without_summary(c):
    path = os.path.join(c["run"], "report.json")
    report = json.load(open(path))
    del report["summary"]
    _write(path, json.dumps(report))


ROWS = [
    # resumes that would change the saved state or the meaning of the step counter
    ("resume-other-trainable-set", lambda c: _train(c, "--config.trainable=('^head/',)"), "trainable"),
    ("resume-other-batch-size", lambda c: _train(c, "--config.batch_size=16"), "batch_size: run 32, now 16"),
    ("resume-other-input-shards", lambda c: _train(c, "--config.input_shards=4"), "input_shards: run 8, now 4"),
    ("resume-other-image-size", lambda c: _train(c, "--config.image_size=48"), "image_size"),
    ("resume-other-standardisation", lambda c: _train(c, "--config.model.standardize=zscore"), "model.standardize"),
    ("resume-other-optimizer", lambda c: _train(c, "--config.optimizer.weight_decay=0.1"),
     "optimizer.weight_decay"),
    ("resume-other-dataset", lambda c: _train(c, "--config.dataset=brain_phantom"), "dataset"),
    # malformed side files
    ("predict-calibration-not-json", lambda c: (_break(c, "calibration.json", "{not json"), _predict(c))[1],
     "could not be read"),
    ("predict-calibration-not-brainjax", lambda c: (_break(c, "calibration.json", "{}"), _predict(c))[1],
     "lacks temperature"),
    ("export-report-without-summary",
     lambda c: (_report_without_summary(c), _export(c, os.path.join(c["tmp"], "m.onnx")))[1], "lacks"),
    ("evaluate-config-not-json", lambda c: (_break(c, "config.json", "{"), _evaluate(c))[1], "could not be read"),
    # predict / evaluate flags
    ("predict-rule-without-threshold", lambda c: _predict(c, "--config.eval.abstain_rule=quality"),
     "fitted no threshold"),
    ("predict-flag-it-ignores", lambda c: _predict(c, "--config.eval.corruptions=()"), "has no effect"),
    ("predict-without-images", lambda c: _predict(c, images=False), "needs --images"),
    ("predict-on-a-folder-that-is-not-a-run",
     lambda c: ["launch.py", f"--workdir={c['user']}", "--mode=predict", f"--images={c['image']}"],
     "not a brainjax run"),
    ("evaluate-with-another-model", lambda c: _evaluate(c, "--config.image_size=64"), "differs from the run's"),
    ("evaluate-split-typo", lambda c: _evaluate(c, "--config.test_split=tst"), "no split 'tst'"),
    # output targets
    ("export-over-a-users-folder", lambda c: _export(c, c["user"]), "exists"),
    ("export-over-the-run", lambda c: _export(c, c["run"]), "run folder"),
    ("export-sidecar-over-config", lambda c: _export(c, os.path.join(c["run"], "config")), "the run's config"),
    ("export-into-checkpoints", lambda c: _export(c, os.path.join(c["run"], "checkpoints", "m.onnx")),
     "inside the run's checkpoints"),
    ("gallery-over-its-input",
     lambda c: ["launch.py", f"--workdir={c['user']}", "--mode=gallery",
                f"--images={_image(os.path.join(c['user'], 'gallery', 'scan.png'))}"], "would replace an input"),
]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r[0])
def test_a_bad_input_on_a_trained_run_is_one_line_and_changes_nothing(row, one_epoch_run, data_dir, tmp_path):
    _, make, expect = row
    context = {"run": copy_of_run(one_epoch_run, tmp_path), "data_dir": data_dir, "tmp": str(tmp_path),
               "user": _user_folder(tmp_path), "image": _image(str(tmp_path / "images" / "scan.png"))}
    argv = make(context)  # may break a side file first: the snapshot is taken after that
    assert_refused(argv, expect, [str(tmp_path)])


def test_the_unchanged_resume_is_accepted(one_epoch_run, data_dir, tmp_path):
    """The control of the resume rows: the run's own settings resume (no refusal), so each
    row above is refused for its one changed field."""
    from brainjax import preflight
    from configs import smoke

    workdir = copy_of_run(one_epoch_run, tmp_path)
    config = smoke.get_config()
    config.data_dir, config.num_epochs, config.model.standardize = data_dir, 2, "none"
    preflight.check(config, workdir, "train")
