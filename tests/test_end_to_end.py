"""Whole runs through launch.py's code path on the small phantom (8 fake devices)."""

import json
import re
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import restore_run
from flax import traverse_util

from brainjax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params(workdir, config, which="latest"):
    """Flattened params of the newest checkpoint ('latest': the training state, 'best':
    the best model kept in it) and the loop's progress."""
    state, best, loop = restore_run(workdir, config)
    params = state.params if which == "latest" else best["params"]
    return traverse_util.flatten_dict(jax.device_get(params)), loop


# Slow tier (suite-time budget, issue 11): `pytest -m slow` runs it; tests/test_preemption.py checks
# the stricter mid-epoch SIGTERM / kill -9 resume in the default suite.
@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_model(smoke_config, tmp_path):
    smoke_config.eval.corruptions = ()
    smoke_config.num_epochs = 2
    smoke_config.early_stopping.enabled = False
    straight = str(tmp_path / "straight")
    train.train_and_evaluate(smoke_config, straight)

    resumed = str(tmp_path / "resumed")
    first = smoke_config.copy_and_resolve_references()
    first.num_epochs = 1  # "interrupted" after epoch 1
    train.train_and_evaluate(first, resumed)
    _, loop = _params(resumed, smoke_config)
    assert loop["epoch"] == 1
    train.train_and_evaluate(smoke_config, resumed)  # same command again: continues
    a, loop_a = _params(straight, smoke_config)
    b, loop_b = _params(resumed, smoke_config)
    assert loop_a["epoch"] == loop_b["epoch"] == 2
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg="/".join(k))
    lines = [json.loads(l) for l in open(os.path.join(resumed, "metrics.jsonl"))]
    assert [l["epoch"] for l in lines if l["kind"] == "epoch"] == [1, 2]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(one_epoch_run, tmp_path):
    """The shared 1-epoch run (checkpoints at steps 11 and 22), continued with an exploding
    learning rate: training stops at the first non-finite loss, and no checkpoint of the
    diverged state (the run saves every 11 steps) replaces the last good one."""
    source, config = one_epoch_run
    workdir = str(tmp_path / "run")
    shutil.copytree(source, workdir)
    good, _ = _params(workdir, config)
    exploding = config.copy_and_resolve_references()
    exploding.num_epochs = 3
    exploding.optimizer.learning_rate = 1e30
    with pytest.raises(FloatingPointError, match="non-finite .*epoch 2"):
        train.train_and_evaluate(exploding, workdir)
    kept, loop = _params(workdir, config)
    assert loop["epoch"] == 1 and loop["step_in_epoch"] == 0  # step 22, the end of epoch 1
    assert all(np.array_equal(good[k], kept[k]) for k in good)


# The model flags of the trained run (predict / evaluate must build the same model).
E2E_MODEL = ["--config.image_size=48", "--config.model.tiny.widths=(8,16,32)", "--config.model.tiny.convs_per_block=2",
             "--config.model.tiny.batchnorm=True", "--config.model.base_batchnorm_train=True"]


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory, data_dir):
    """A short real run through launch.py (subprocess, default 8 fake devices)."""
    workdir = str(tmp_path_factory.mktemp("e2e"))
    cmd = [sys.executable, "launch.py", f"--workdir={workdir}", "--config=configs/smoke.py",
           f"--config.data_dir={data_dir}", "--config.num_epochs=16", "--config.image_size=48",
           "--config.model.tiny.widths=(8,16,32)", "--config.model.tiny.convs_per_block=2",
           "--config.model.tiny.batchnorm=True", "--config.model.base_batchnorm_train=True",
           "--config.optimizer.learning_rate=0.003", "--config.train_degrade.recipe=none",
           "--config.train_split=train", "--config.val_split=test", "--config.eval.seed_protocol_split=test"]
    # 2 devices: the multi-device path at a quarter of the per-device overhead of 8 on a
    # 2-core machine (tests/test_distributed.py covers larger layouts)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir, out.stderr + out.stdout


def test_launch_trains_learns_and_reports(trained_workdir):
    workdir, log = trained_workdir
    assert "epoch 16/16" in log or "early stopping" in log
    report = json.load(open(os.path.join(workdir, "report.json")))
    clean = report["clean"]
    assert report["num_examples"] == 120
    assert np.asarray(clean["confusion_matrix"]).sum() == 120
    assert sum(c["support"] for c in clean["per_class"].values()) == 120
    assert clean["accuracy"] > 0.6, clean["accuracy"]  # chance is 0.25
    for name in ("gaussian_noise", "gaussian_blur", "downsample"):
        for sev in ("1", "5"):
            m = report["degraded"][name][sev]
            assert np.asarray(m["confusion_matrix"]).sum() == 120
    lo, hi = clean["ci95"]["accuracy"]
    assert lo <= clean["accuracy"] <= hi and hi - lo < 0.3
    sp = report["seed_protocol"]
    assert sp["mixed"]["num_examples"] == 240 and sp["clean"]["accuracy"] == clean["accuracy"]
    assert sp["degraded"]["accuracy"] < sp["clean"]["accuracy"]  # a clean-trained model on degraded copies
    # severity-5 noise (sigma 0.38) hurts a clean-trained model
    assert report["degraded"]["gaussian_noise"]["5"]["accuracy"] < clean["accuracy"] - 0.1
    for png in ("confusion_matrix.png", "robustness.png", "reliability.png", "risk_coverage.png"):
        assert os.path.getsize(os.path.join(workdir, png)) > 5000
    # Calibration on held-out data is tested in test_calibration.py; here: the report and
    # the calibration.json predict reads hold the same temperature and threshold.
    cal = report["calibration"]
    saved = json.load(open(os.path.join(workdir, "calibration.json")))
    assert saved["temperature"] == cal["temperature"] and saved["rule"] == report["selective"]["rule"]
    # the default rule, ood_max_prob: max_prob's threshold and the OOD threshold
    assert saved["thresholds"]["max_prob"] == report["selective"]["threshold"]["max_prob"]
    assert saved["ood"]["threshold"] == report["selective"]["threshold"]["ood"] == report["ood"]["threshold"]
    assert os.path.getsize(os.path.join(workdir, "ood.png")) > 5000
    assert set(cal["degraded_mean"]) >= {"ece_before", "ece_after", "nll_before", "nll_after"}
    sel = report["selective"]
    assert sel["rule"] == "ood_max_prob" and set(sel["clean"]) >= {"aurc", "accuracy_at_80", "accuracy_at_90"}
    assert sel["rules"]["max_prob"]["clean"]["coverage_at_threshold"] >= sel["clean"]["coverage_at_threshold"]
    # Keeping the most confident 80% is at least as accurate as keeping everything, here.
    assert sel["rules"]["max_prob"]["clean"]["accuracy_at_80"] >= clean["accuracy"] - 1e-9
    epochs = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    assert any(e["kind"] == "epoch" and "images_per_sec" in e for e in epochs)


def test_evaluate_mode_reproduces_report(trained_workdir, data_dir, smoke_config):
    """In process (tests/test_run_config.py runs the launcher's own argv path): the model
    comes from the run's config.json, not from the smoke config's own model; another
    eval batch size gives the same examples and the same result."""
    from brainjax import run

    workdir, _ = trained_workdir
    before = json.load(open(os.path.join(workdir, "report.json")))
    smoke_config.eval_batch_size = 16
    smoke_config.optimizer.weight_decay = 0.01  # another optimizer: inference restores params + batch_stats only
    assert run.main(smoke_config, workdir, "evaluate", overrides=["data_dir", "eval_batch_size",
                                                                   "optimizer.weight_decay"]) == 0
    after = json.load(open(os.path.join(workdir, "report.json")))
    assert after["clean"]["confusion_matrix"] == before["clean"]["confusion_matrix"]
    assert after["degraded"]["gaussian_noise"]["5"]["accuracy"] == before["degraded"]["gaussian_noise"]["5"]["accuracy"]


def test_predict_mode_reports_bad_files_and_predicts_the_rest(trained_workdir, tmp_path):
    from PIL import Image

    from brainjax.data import phantom

    workdir, _ = trained_workdir
    good = tmp_path / "slice (1).png"
    Image.fromarray(phantom.generate_slice(5, 0, 3, 128)[..., 0]).convert("RGB").save(good)
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    cmd = [sys.executable, "launch.py", f"--workdir={workdir}", "--config=configs/smoke.py", "--mode=predict",
           f"--images={good},{bad}", *E2E_MODEL]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "corrupt.jpg" in out.stderr and "Traceback" not in out.stderr
    line = [l for l in out.stdout.splitlines() if "slice (1).png" in l]
    assert line, out.stdout
    ranked = re.search(r"\(((?:[a-z_]+ [0-9.]+\s*){4})\)", line[0]).group(1)
    probs = [float(tok) for tok in ranked.split()[1::2]]
    assert len(probs) == 4 and abs(sum(probs) - 1) < 0.01
    assert "quality=n/a" in line[0]  # this model has no quality head
    assert not os.path.exists(os.path.join(workdir, "explain"))  # only with --explain


def test_predict_explain_writes_a_grad_cam_overlay_per_image(trained_workdir, tmp_path):
    from PIL import Image

    from brainjax.data import phantom

    workdir, _ = trained_workdir
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"scan_{i}.png")
        Image.fromarray(phantom.generate_slice(9, i, i, 96)[..., 0]).save(paths[-1])
    cmd = [sys.executable, "launch.py", f"--workdir={workdir}", "--config=configs/smoke.py", "--mode=predict",
           "--explain", f"--images={paths[0]},{paths[1]}", *E2E_MODEL]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for i in range(2):
        png = os.path.join(workdir, "explain", f"scan_{i}.png")
        assert os.path.getsize(png) > 5000
        assert f"wrote {png}" in out.stdout


def test_predict_prints_the_temperature_scaled_probabilities(trained_workdir, tmp_path, capsys):
    """The printed probabilities are softmax(logits / T) with calibration.json's T (set to
    3 in a copy of the run, far from 1, so the raw softmax cannot pass)."""
    import shutil

    from PIL import Image

    from brainjax import inference, run
    from brainjax.data import phantom
    from brainjax.data import decode

    workdir = str(tmp_path / "run")
    shutil.copytree(trained_workdir[0], workdir)
    cal = inference.load_calibration(workdir)
    cal["temperature"] = 3.0
    with open(os.path.join(workdir, inference.CALIBRATION_FILE), "w") as f:
        json.dump(cal, f)
    image = tmp_path / "scan.png"
    Image.fromarray(phantom.generate_slice(11, 2, 1, 48)[..., 0]).save(image)
    config = inference.load_run_config(workdir)
    assert run.predict_files(config, workdir, [str(image)]) == 0
    printed = capsys.readouterr().out
    ranked = re.search(r"\(((?:[a-z_]+ [0-9.]+\s*){4})\)", printed).group(1).split()
    shown = dict(zip(ranked[0::2], map(float, ranked[1::2])))
    model, variables = inference.restore_for_inference(config, workdir, 4)
    x = decode.model_inputs(decode.read(str(image)).slices, 48)
    names = inference.class_names(config, workdir)
    for temperature, should_match in ((3.0, True), (1.0, False)):
        p = np.asarray(inference.serving_fn(model, variables, temperature)(x)["probabilities"])[0]
        close = all(abs(shown[n] - p[i]) <= 6e-4 for i, n in enumerate(names))
        assert close == should_match, (temperature, shown, p)


def _spearman(a, b):
    from scipy.stats import spearmanr

    return float(spearmanr(np.ravel(a), np.ravel(b)).statistic)


def test_grad_cam_passes_the_model_randomisation_check(trained_workdir):
    """Adebayo et al. 2018: maps that survive randomising the weights explain nothing. The
    trained model's maps must differ clearly from a randomly initialised model's (rank
    correlation well below 1), must not be uniform, and must be stable under a tiny
    change of the input (a random map would not be)."""
    import jax

    from brainjax import explain, inference, models
    from brainjax.data import phantom
    from configs import smoke

    workdir, _ = trained_workdir
    config = smoke.get_config()
    config.image_size = 48
    config.model.tiny.update(widths=(8, 16, 32), convs_per_block=2, batchnorm=True)
    config.model.base_batchnorm_train = True
    model, variables = inference.restore_for_inference(config, workdir, 4)
    labels = [0, 1, 3, 0, 1, 3]  # tumour classes: a lesion to look at
    x = np.stack([phantom.generate_slice(11, i, lab, 48) for i, lab in enumerate(labels)]).astype(np.float32) / 255
    cam = jax.jit(lambda v, x: explain.grad_cam(model, v, x))
    trained = np.asarray(cam(variables, x))
    random_vars = models.init_variables(model, jax.random.key(123), (48, 48, 1))
    randomised = np.asarray(cam(random_vars, x))
    nudged = np.asarray(cam(variables, np.clip(x + 0.01 * np.random.default_rng(0).normal(size=x.shape), 0, 1)
                            .astype(np.float32)))
    assert trained.shape == (6, 48, 48) and trained.min() >= 0 and trained.max() <= 1
    vs_random = [_spearman(t, r) for t, r in zip(trained, randomised) if r.std() > 0]
    stable = [_spearman(t, n) for t, n in zip(trained, nudged)]
    print("Grad-CAM rank correlation trained vs randomised:", np.round(vs_random, 2), "trained vs nudged input:",
          np.round(stable, 2))
    assert all(t.std() > 0.05 for t in trained)  # not uniform
    assert np.mean(vs_random) < 0.5
    assert np.mean(stable) > 0.5  # measured 0.78; a random map scores ~0


def test_bad_config_is_one_clear_line(tmp_path, data_dir):
    cmd = [sys.executable, "launch.py", f"--workdir={tmp_path}", "--config=configs/smoke.py",
           f"--config.data_dir={data_dir}", "--config.trainable=('^haed/',)"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "match no parameter" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("flag", ["--config.model.no_such_field=3", "--config.num_epochs=abc",
                                  "--config=configs/no_such_config.py"])
def test_bad_config_flag_is_one_clear_line(tmp_path, flag):
    out = subprocess.run([sys.executable, "launch.py", f"--workdir={tmp_path}", flag], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("brainjax: error:")]
    assert len(errors) == 1 and flag in errors[0], out.stderr[-2000:]
    assert not os.listdir(tmp_path)  # nothing was started
