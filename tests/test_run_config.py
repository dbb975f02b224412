"""Inference builds the model the run trained (issue 21): evaluate / predict read
<workdir>/config.json; command-line eval.* and data-path overrides apply; a model
override that differs is one clear error naming the field."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from brainjax import inference, run, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def unstandardized_run(one_epoch_run, tmp_path):
    """A copy of the shared smoke run trained with model.standardize=none."""
    copy = str(tmp_path / "run")
    shutil.copytree(one_epoch_run[0], copy)
    return copy


def _report(workdir):
    with open(os.path.join(workdir, "report.json")) as f:
        return json.load(f)


def test_evaluate_without_the_training_flag_reproduces_the_report(unstandardized_run, smoke_config):
    before = _report(unstandardized_run)
    assert smoke_config.model.standardize == "zscore"  # what the flags alone would build
    smoke_config.eval.corruptions, smoke_config.eval.severities = ("gaussian_noise",), (3,)
    assert run.main(smoke_config, unstandardized_run, "evaluate", overrides=["data_dir"]) == 0
    after = _report(unstandardized_run)
    after.pop("seconds", None), before.pop("seconds", None)
    assert after == before


def test_eval_overrides_apply_and_model_overrides_that_differ_are_refused(unstandardized_run, smoke_config):
    smoke_config.eval.severities = (1, 5)
    config = inference.inference_config(smoke_config, unstandardized_run, ["eval.severities"])
    assert list(config.eval.severities) == [1, 5] and config.model.standardize == "none"
    smoke_config.model.standardize = "none"  # equal to the run's: accepted
    inference.inference_config(smoke_config, unstandardized_run, ["model.standardize"])
    smoke_config.image_size = 48
    with pytest.raises(inference.UserError, match=r"--config.image_size=48 differs from the run's image_size=32"):
        inference.inference_config(smoke_config, unstandardized_run, ["image_size"])


def test_launch_refuses_a_different_model_flag_with_one_line(unstandardized_run):
    steps_before = sorted(os.listdir(os.path.join(unstandardized_run, "checkpoints")))
    report_before = open(os.path.join(unstandardized_run, "report.json")).read()
    out = subprocess.run([sys.executable, "launch.py", f"--workdir={unstandardized_run}", "--config=configs/smoke.py",
                          "--mode=evaluate", "--config.model.standardize=zscore"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1
    errors = [l for l in out.stderr.splitlines() if l.startswith("brainjax: error:")]
    assert len(errors) == 1 and "model.standardize" in errors[0] and "'none'" in errors[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert sorted(os.listdir(os.path.join(unstandardized_run, "checkpoints"))) == steps_before
    assert open(os.path.join(unstandardized_run, "report.json")).read() == report_before


def test_resuming_training_with_another_model_is_refused(unstandardized_run, smoke_config, capsys):
    smoke_config.num_epochs = 2  # standardize zscore (the flags' default) into a standardize=none run
    assert run.main(smoke_config, unstandardized_run, "train") == 1
    err = capsys.readouterr().err
    assert "model.standardize: run 'none', now 'zscore'" in err


def test_a_run_without_config_json_falls_back_to_the_flags(tmp_path, smoke_config, caplog):
    assert inference.inference_config(smoke_config, str(tmp_path), ["eval.severities"]) is smoke_config
    assert "has no config.json" in caplog.text


@pytest.mark.parametrize("field,value,message", [
    ("eval.corruptions", ("gaussian_noise", "gausian_blur"), "unknown corruption(s) ['gausian_blur']"),
    ("eval.severities", (1, 6), "eval.severities must be integers in 1..5, got 6"),
    ("eval.abstain_rule", "quality", "needs a quality head"),
    ("eval.abstain_rule", "entropy", "eval.abstain_rule must be one of"),
    ("eval.reference_report", "/nonexistent/report.json", "reference_report=/nonexistent/report.json does not exist"),
    ("eval.adapt_batchnorm", True, "no BatchNorm layer"),  # the smoke CNN has none
])
def test_evaluation_config_errors_come_before_training(smoke_config, tmp_path, field, value, message):
    section, name = field.split(".")
    smoke_config[section][name] = value
    workdir = str(tmp_path / "run")
    with pytest.raises(inference.UserError) as err:
        train.train_and_evaluate(smoke_config, workdir)
    assert message in str(err.value)
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))  # not one step was trained
    assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))


def test_a_run_older_than_a_field_gets_it_from_the_config_file_unless_it_builds_the_model(tmp_path):
    """Defaults live in the config files only: evaluate / predict on a run whose
    config.json predates a field take it from the command-line config (named in a
    warning); a missing model field is refused, since the run's model may differ."""
    import json

    import pytest

    from brainjax import inference
    from brainjax.errors import UserError
    from configs import default

    flags = default.get_config()
    saved = json.loads(flags.to_json_best_effort())
    del saved["holdout_source"], saved["eval"]["evaluators"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    config = inference.inference_config(flags, str(tmp_path))
    assert config.holdout_source == "" and tuple(config.eval.evaluators) == tuple(flags.eval.evaluators)
    del saved["model"]["standardize"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(UserError, match=r"lacks the model field\(s\) \['model.standardize'\]"):
        inference.inference_config(flags, str(tmp_path))
