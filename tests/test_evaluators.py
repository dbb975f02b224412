"""Evaluators are plug-ins: a new one is one file plus its name in the config."""

import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NEW_EVALUATOR = '''"""A test evaluator: the test split's size and clean accuracy, computed on its own."""
import os

import numpy as np

from brainjax import files


class Evaluator:
    def check(self, config):
        del config

    def plot(self, section, outdir):
        files.write_text(os.path.join(outdir, "count_check.txt"), f"{section['num_examples']}\\n")

    def run(self, context):
        out = context.predictions(context.config.test_split)
        hits = out["probabilities"].argmax(-1) == out["labels"]
        return {"num_examples": int(len(out["labels"])), "accuracy": float(np.mean(hits)),
                "cached": context.predictions(context.config.test_split) is out}
'''


def test_a_new_evaluator_is_one_file_and_one_config_entry(tmp_path, data_dir):
    """In a copy of the package: add brainjax/evaluators/count_check.py and name it in
    --config.eval.evaluators; report.json gets its section, which agrees with `clean`."""
    copy = tmp_path / "checkout"
    for name in ("brainjax", "configs"):
        shutil.copytree(os.path.join(ROOT, name), copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, "launch.py"), copy / "launch.py")
    (copy / "brainjax" / "evaluators" / "count_check.py").write_text(NEW_EVALUATOR)  # the one file
    from configs import default

    names = tuple(default.get_config().eval.evaluators) + ("count_check",)  # the one config entry
    out = subprocess.run([sys.executable, "launch.py", f"--workdir={tmp_path / 'run'}", "--config=configs/smoke.py",
                          "--config.num_epochs=1", f"--config.data_dir={data_dir}",
                          f"--config.eval.evaluators={names!r}"], cwd=copy, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.load(open(tmp_path / "run" / "report.json"))
    section = report["count_check"]
    assert section["num_examples"] == report["num_examples"] == sum(map(sum, report["clean"]["confusion_matrix"]))
    assert abs(section["accuracy"] - report["clean"]["accuracy"]) < 1e-12
    assert section["cached"] is True  # the test split's predictions were computed once
    assert (tmp_path / "run" / "count_check.txt").read_text() == f"{report['num_examples']}\n"  # its own plot hook


def test_an_unknown_evaluator_is_one_line_before_training(tmp_path, data_dir):
    out = subprocess.run([sys.executable, "launch.py", f"--workdir={tmp_path / 'run'}", "--config=configs/smoke.py",
                          f"--config.data_dir={data_dir}", "--config.eval.evaluators=('robustness','nosuch')"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    errors = [l for l in out.stderr.splitlines() if l.startswith("brainjax: error:")]
    assert out.returncode == 1 and len(errors) == 1 and "no evaluator 'nosuch'" in errors[0], out.stderr[-2000:]
    assert not os.path.exists(tmp_path / "run")
