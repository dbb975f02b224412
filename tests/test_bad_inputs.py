"""The bad-input table: a user's mistake is one `brainjax: error:` line, before any work.

Each row runs the real command (launch.py or `python -m brainjax.export`) in a subprocess
and asserts: a non-zero exit; exactly one `brainjax: error:` line, naming what the row
expects, and no traceback; no training step (every mistake here is knowable before
training); and every file that existed in the workdir and in any output target before
the command is byte-identical after it, with no file added there. Rows on a trained run
use a copy of the session's one-epoch run (tests/conftest.py `one_epoch_run`).

The rows that need a trained run are in tests/test_bad_inputs_run.py (the table is split
in two files so both test workers share it).
"""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = ["--config=configs/smoke.py", "--config.num_epochs=1"]


def snapshot(*folders: str) -> dict:
    """{path: bytes} of every file below `folders` (a file path stands for itself)."""
    out = {}
    for folder in folders:
        if os.path.isfile(folder):
            out[folder] = open(folder, "rb").read()
        for dirpath, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(dirpath, name)
                out[path] = open(path, "rb").read()
    return out


def run_command(argv: list[str], cwd: str = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def assert_refused(argv: list[str], expect: str, watched: list[str], cwd: str = ROOT) -> str:
    """Runs `argv`; asserts the row's contract; returns the error line."""
    before = snapshot(*watched)
    existed = {p: os.path.exists(p) for p in watched}
    out = run_command(argv, cwd)
    log = out.stdout + out.stderr
    errors = [l for l in out.stderr.splitlines() if l.startswith("brainjax: error:")]
    assert out.returncode != 0, log[-3000:]
    assert len(errors) == 1, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert expect in errors[0], errors[0]
    assert "epoch 1/" not in log and "steps/epoch" not in log, "a training step was taken"
    assert snapshot(*watched) == before, "a file that existed before the command changed, or one was added"
    for path, was in existed.items():
        assert os.path.exists(path) == was, path
    return errors[0]


def _image(path: str) -> str:
    import numpy as np
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray((np.arange(32 * 32).reshape(32, 32) % 255).astype(np.uint8)).save(path)
    return path


def _user_folder(tmp) -> str:
    folder = tmp / "my_scans"
    folder.mkdir()
    (folder / "notes.txt").write_text("a user's file")
    return str(folder)


# (id, extra argv given a context dict, expected text in the error line). ctx: tmp (a
# pytest tmp_path), data_dir. Each runs as `launch.py --workdir=<ctx['workdir']> SMOKE`.
def _train_rows():
    return [
        ("workdir-is-a-file", lambda c: {"workdir": str(c["file"])}, "is a file, not a folder"),
        ("workdir-cannot-be-made", lambda c: {"workdir": "/proc/brainjax-run"}, "is not writable"),
        ("workdir-below-a-file", lambda c: {"workdir": str(c["file"]) + "/run"}, "is a file, so"),
        ("workdir-holds-a-users-files", lambda c: {"workdir": _user_folder(c["tmp"])}, "not a brainjax run"),
        ("test-split-typo", lambda c: {"args": ["--config.test_split=tst"]}, "no split 'tst'"),
        ("val-split-typo", lambda c: {"args": ["--config.val_split=valid"]}, "no split 'valid'"),
        ("extra-split-typo", lambda c: {"args": ["--config.eval.extra_splits=('nope',)"]}, "no split 'nope'"),
        ("seed-protocol-split-typo", lambda c: {"args": ["--config.eval.seed_protocol_split=bogus"]},
         "no split 'bogus'"),
        ("malformed-split-spec", lambda c: {"args": ["--config.train_split=train[:90%"]}, "not a split spec"),
        ("ood-dir-missing", lambda c: {"args": [f"--config.eval.ood_dirs=('{c['tmp']}/siteB',)"]},
         "is not a folder"),
        ("ood-dir-named-test-without-images",
         lambda c: {"args": [f"--config.eval.ood_dirs=('{_empty(c['tmp'] / 'siteB' / 'test')}',)"]},
         "holds no image files"),
        ("ood-dir-twice", lambda c: {"args": [f"--config.eval.ood_dirs=('{c['images']}','{c['images']}/')"]},
         "twice"),
        ("reference-report-not-json", lambda c: {"args": [f"--config.eval.reference_report={c['file']}"]},
         "could not be read"),
        ("reference-report-not-a-report",
         lambda c: {"args": [f"--config.eval.reference_report={_text(c['tmp'] / 'r.json', '[1]')}"]},
         "not a brainjax report.json"),
        ("batch-not-divisible-by-shards", lambda c: {"args": ["--config.input_shards=3"]},
         "divisible by config.input_shards=3"),
        ("batch-not-divisible-by-devices", lambda c: {"args": ["--config.batch_size=12"]},
         "divisible by the number of devices"),
        ("unknown-corruption", lambda c: {"args": ["--config.eval.corruptions=('nosuch',)"]},
         "unknown corruption"),
        ("abstain-rule-typo", lambda c: {"args": ["--config.eval.abstain_rule=bogus"]}, "must be one of"),
        ("unknown-dataset", lambda c: {"args": ["--config.dataset=nosuch_dataset"]}, "unknown dataset"),
        ("unknown-dataset-config", lambda c: {"args": ["--config.dataset=brain_phantom/nosuch"]},
         "brain_phantom has no config 'nosuch'"),
        ("image-folder-without-manual-dir", lambda c: {"args": ["--config.dataset=image_folder"]},
         "needs config.manual_dir"),
        ("download-source-typo", lambda c: {"args": ["--config.download=ftp",
                                                     "--config.dataset=brain_tumor_mri/sartaj"]},
         "the only source is 'kaggle'"),
        ("fixed-copy-without-feature-cache", lambda c: {"args": ["--config.fixed_degraded_copy=True"]},
         "feature-cache path"),
        ("unknown-config-field", lambda c: {"args": ["--config.nosuchfield=1"]}, "could not apply"),
        ("unknown-config-name", lambda c: {"config": "--config=nosuchconfig"}, "no bundled config"),
    ]


def _empty(path) -> str:
    os.makedirs(path, exist_ok=True)
    return str(path)


def _text(path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.fixture
def context(tmp_path, data_dir):
    (tmp_path / "README.md").write_text("# not a workdir\n")
    images = tmp_path / "images"
    _image(str(images / "a.png"))
    return {"tmp": tmp_path, "data_dir": data_dir, "file": tmp_path / "README.md", "images": str(images),
            "workdir": str(tmp_path / "fresh")}


@pytest.mark.parametrize("row", _train_rows(), ids=lambda r: r[0])
def test_a_bad_training_input_is_one_line_before_any_work(row, context):
    _, make, expect = row
    spec = make(context)
    workdir = spec.get("workdir", context["workdir"])
    config = [spec["config"], "--config.num_epochs=1"] if "config" in spec else SMOKE
    argv = ["launch.py", f"--workdir={workdir}", *config, f"--config.data_dir={context['data_dir']}",
            *spec.get("args", [])]
    watched = [str(context["tmp"])]
    assert_refused(argv, expect, watched)
    assert not os.path.exists(context["workdir"])  # not even an empty folder was made


def copy_of_run(one_epoch_run, tmp_path) -> str:
    workdir = str(tmp_path / "run")
    shutil.copytree(one_epoch_run[0], workdir)
    return workdir
