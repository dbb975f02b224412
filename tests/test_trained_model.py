"""Checks on one trained, calibrated model with a quality head (one training run shared):
the quality estimate falls with severity, and the exported model is the evaluated one."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from brainjax import degrade, inference, models
from brainjax.data import phantom


def _images(n=48, size=32):
    x = np.stack([phantom.generate_slice(1, i, i % 4, size) for i in range(n)])
    return jnp.asarray(x, jnp.float32) / 255.0


@pytest.fixture(scope="module")
def quality_run(tmp_path_factory, data_dir):
    """A smoke-sized run with the quality head, trained against noise/blur/downsampling,
    calibrated with the quality abstention rule.
    The CNN has BatchNorm and two convolutions per block: on the smoke config's own
    one-convolution CNN without BatchNorm, 4 epochs leave the head at its prior (its
    noise estimate even fell with the noise; measured on that config). 12 epochs: at 4
    and 8, some trajectories (another CPU's float rounding) left the head flat or rising."""
    from brainjax import train
    from configs import smoke

    c = smoke.get_config()
    c.data_dir = data_dir
    c.model.quality_head.enabled = True
    c.quality_loss_weight = 1.0
    c.num_epochs, c.optimizer.learning_rate = 12, 3e-3
    c.train_degrade.prob = 0.7
    c.model.tiny.update(widths=(8, 16, 32), convs_per_block=2, batchnorm=True)
    c.model.base_batchnorm_train = True
    c.eval.corruptions, c.eval.severities = ("gaussian_noise",), (1,)
    c.eval.abstain_rule = "quality"
    workdir = str(tmp_path_factory.mktemp("quality") / "run")
    train.train_and_evaluate(c, workdir)
    return workdir, c



def test_trained_quality_estimate_falls_with_severity(quality_run):
    """On a trained model the mean scan-quality estimate of the same test images is lower
    under heavy noise than clean (an untrained head has no reason to be)."""
    from brainjax import inference

    workdir, c = quality_run
    model, variables = inference.restore_for_inference(c, workdir, 4)
    x = _images()
    keys = degrade.example_keys(jax.random.key(3), jnp.arange(x.shape[0]))

    @jax.jit
    def mean_quality(level):
        noisy = degrade.apply(x, keys, "gaussian_noise", level)
        _, q = model.apply(variables, noisy, train=False, with_quality=True)
        return models.quality_score(q).mean()

    means = [float(mean_quality(0.0))] + [float(mean_quality(degrade.level_for("gaussian_noise", s))) for s in range(1, 6)]
    print("mean quality, clean then severities 1-5:", np.round(means, 3))
    # What holds over the spread of training trajectories (issue 25): this fixture's
    # config at 12 epochs, 5 trajectories (seeds 0-2, input_shards 4 and 8, with and
    # without the suite's compilation cache, which changes XLA:CPU's rounding; Intel
    # Xeon, 2026-12-07): the mean over severities 3-5 is below clean by 0.088-0.231 and
    # below severity 1 in all 5. At 4 epochs this machine gave -0.008 (0.018-0.27 on the
    # AMD one), at 8 epochs one trajectory of eight gave -0.046. A strict fall over every
    # severity is not asserted.
    heavy = float(np.mean(means[3:]))
    assert means[0] - heavy > 0.01, means
    assert means[1] > heavy, means


def test_exported_onnx_equals_predict_on_a_trained_calibrated_model(quality_run, scan_files, capsys):
    """The export test on a model trained and calibrated through the real code path: its
    fitted temperature (not 1) folded into the graph, the quality output, and the
    quality rule's ABSTAIN decisions from the sidecar."""
    pytest.importorskip("jax2onnx")
    import shutil

    from test_export import assert_onnx_equals_predict

    workdir, c = quality_run
    copy = workdir + "_export"
    shutil.copytree(workdir, copy)
    cal = inference.load_calibration(copy)
    assert cal["rule"] == "quality" and abs(cal["temperature"] - 1.0) > 1e-3
    worst = assert_onnx_equals_predict(copy, c, scan_files, capsys)
    print(f"trained zscore model, T = {cal['temperature']:.3f}: max |onnx - predict| = {worst:.2e}")


def _shifted_files(paths, folder):
    """Each scan intensity-inverted inside the head (a contrast no training scan has) and
    gamma-remapped (x^3): the same anatomy from 'another sequence'."""
    from PIL import Image

    out = {"inverted": [], "gamma": []}
    for path in paths:
        x = np.asarray(Image.open(path).convert("L"), np.float32) / 255.0
        head = x > 0.05
        variants = {"inverted": np.where(head, 1.0 - x, 0.0), "gamma": x ** 3}
        for name, y in variants.items():
            target = os.path.join(folder, f"{name}_{os.path.basename(path)}.png")
            Image.fromarray((y * 255).round().astype(np.uint8)).save(target)
            out[name].append(target)
    return out


def test_ood_score_ranks_shifted_scans_and_predict_equals_onnx(quality_run, scan_files, tmp_path, capsys):
    """On the trained model: the Mahalanobis OOD score of each intensity-inverted or
    gamma-remapped scan is above the score of the scan it came from. Then rule 'ood' with
    a threshold between the scores: predict's ABSTAIN lines say 'out of distribution'
    exactly where the exported model's ood_score exceeds the sidecar's threshold, and the
    two scores agree."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("jax2onnx")
    import json
    import shutil

    from brainjax import export, run
    from test_export import OOD_TOL, _gap_threshold

    workdir, c = quality_run
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    clean = scan_files[:4]  # the last two are noisy
    shifted = _shifted_files(clean, str(tmp_path))
    files = clean + shifted["inverted"] + shifted["gamma"]
    run_config = inference.inference_config(c, copy)
    first = run.predict_images(run_config, copy, files)["ood_score"]
    source, inverted, gamma = first[:4], first[4:8], first[8:]
    assert (inverted > source).all() and (gamma > source).all(), (source, inverted, gamma)

    cal = inference.load_calibration(copy)
    cal["rule"], cal["ood"]["threshold"] = "ood", _gap_threshold(first)
    with open(os.path.join(copy, inference.CALIBRATION_FILE), "w") as f:
        json.dump(cal, f)
    pred = run.predict_images(run_config, copy, files)
    assert 0 < pred["abstain"].sum() < len(files)
    capsys.readouterr()
    run.predict_files(run_config, copy, files)
    printed = capsys.readouterr().out.splitlines()
    assert [("ABSTAIN out of distribution" in line) for line in printed] == list(pred["abstain"])
    assert all("ood=" in line for line in printed)

    path = export.export(copy, "onnx")
    side = json.load(open(path + ".json"))
    assert side["abstention"]["rule"] == "ood" and side["abstention"]["threshold"] == cal["ood"]["threshold"]
    names = [o["name"] for o in side["outputs"]]
    outputs = dict(zip(names, ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        names, {"images": pred["images"]})))
    gap = np.abs(outputs["ood_score"] - pred["ood_score"]) / np.maximum(1.0, np.abs(pred["ood_score"]))
    print(f"ood score: source {np.round(source, 1)}, inverted {np.round(inverted, 1)}, gamma {np.round(gamma, 1)}; "
          f"max relative |onnx - predict| ood_score: {gap.max():.2e}")
    assert gap.max() <= OOD_TOL
    assert list(outputs["ood_score"] > side["abstention"]["threshold"]) == list(pred["abstain"])
