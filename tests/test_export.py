"""Export parity: the exported ONNX / SavedModel / TFLite files give brainjax's
probabilities on the same images (max abs difference <= 1e-4), batches of 1 and 5; bad
input is one clear error with nothing half-written."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from brainjax import checkpoint, export, inference, models, steps
from brainjax import state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4
CLASS_NAMES = ["glioma", "meningioma", "no_tumor", "pituitary"]


def _fake_run(tmp_path, backbone: str, size: int, **model_options):
    """A run directory with a config.json and a checkpoint of random weights."""
    from configs import smoke

    config = smoke.get_config()
    config.image_size = size
    config.model.backbone = backbone
    if backbone != "tiny":
        config.model.head, config.model.head_hidden = "enhanced", (16,)
    config.model.update(model_options)
    workdir = str(tmp_path / backbone)
    os.makedirs(workdir)
    record = json.loads(config.to_json_best_effort())
    record["class_names"] = list(CLASS_NAMES)  # what a training run writes beside the config
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(record, f)
    model = models.create_model(config.model, 4)
    state, _, _ = state_lib.create_train_state(config, model, 4, jax.random.key(1), 1)
    best = {"params": state.params, "batch_stats": state.batch_stats}
    ckpt = checkpoint.Checkpoints(workdir)
    ckpt.save(1, state, best, {"epoch": 1})
    ckpt.wait()
    ckpt.close()
    return workdir, model, steps.model_variables(state.params, state.batch_stats)


def _images(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 1), dtype=np.uint8)


def _reference(model, variables, images):
    return np.asarray(inference.serving_fn(model, variables)(images)["probabilities"])


def _run_onnx(path, images):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["images"] and [o.name for o in sess.get_outputs()] == ["probabilities"]
    return sess.run(["probabilities"], {"images": images})[0]


def _run_savedmodel(path, images):
    import tensorflow as tf

    fn = tf.saved_model.load(path).signatures["serving_default"]
    return fn(images=tf.constant(images))["probabilities"].numpy()


def _run_tflite(path, images):
    import tensorflow as tf

    runner = tf.lite.Interpreter(model_path=path).get_signature_runner("serving_default")
    return runner(images=images)["probabilities"]


RUNNERS = {"onnx": _run_onnx, "savedmodel": _run_savedmodel, "tflite": _run_tflite}
CASES = [("tiny", 32, {}), ("vgg16", 32, {"vgg16": {"conv_impl": "direct"}}), ("resnet50v2", 32, {})]


# TFLite of the large backbones converts for ~45 s each, the ResNet50V2 SavedModel for
# ~60 s, VGG16's ~30 s (BUILD_NOTES), ResNet50V2 ONNX 82 s in a loaded --durations run: kept out of the
# default suite (pytest -m slow runs them, suite-time budget); every format runs on the
# tiny model. VGG16 ONNX (31 s) is in the slow tier so that the export-vs-
# predict tests fit the suite-time budget.
SLOW_EXPORTS = {("vgg16", "tflite"), ("resnet50v2", "tflite"), ("resnet50v2", "savedmodel"), ("vgg16", "savedmodel"),
                ("resnet50v2", "onnx"), ("vgg16", "onnx")}
PARITY = [pytest.param(fmt, *case, id=f"{case[0]}-{fmt}",
                       marks=[pytest.mark.slow] if (case[0], fmt) in SLOW_EXPORTS else [])
          for case in CASES for fmt in ("onnx", "savedmodel", "tflite")]


@pytest.mark.parametrize("fmt,backbone,size,options", PARITY)
def test_export_matches_brainjax_probabilities(tmp_path, fmt, backbone, size, options):
    if fmt == "onnx":
        pytest.importorskip("jax2onnx")
        pytest.importorskip("onnxruntime")
    workdir, model, variables = _fake_run(tmp_path, backbone, size, **options)
    path = export.export(workdir, fmt)
    side = json.load(open(path + ".json"))
    assert side["class_names"] == ["glioma", "meningioma", "no_tumor", "pituitary"] and side["image_size"] == size
    worst = 0.0
    for n in (1, 5):
        images = _images(n, size, seed=n)
        got = RUNNERS[fmt](path, images)
        want = _reference(model, variables, images)
        assert got.shape == (n, 4) and got.dtype == np.float32
        worst = max(worst, float(np.abs(got - want).max()))
    print(f"{fmt} {backbone}@{size}: max |exported - brainjax| = {worst:.2e}")
    assert worst <= TOL


def test_export_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, capsys):
    """The command line once in its own process (no traceback escapes `python -m`), the
    other bad inputs through the same `main` in this process (a subprocess each cost ~5 s
    of imports on a 2-core machine)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    out = subprocess.run([sys.executable, "-m", "brainjax.export", f"--workdir={empty}", "--format=onnx"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "config.json" in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("brainjax: error:")

    def run(*argv):
        code = export.main(list(argv))
        err = capsys.readouterr().err
        lines = [l for l in err.splitlines() if l.startswith("brainjax: error:")]
        assert code == 1 and len(lines) == 1, err
        return lines[0]

    workdir, _, _ = _fake_run(tmp_path, "tiny", 32)
    assert "is not one of" in run(f"--workdir={workdir}", "--format=pt")
    assert "not writable" in run(f"--workdir={workdir}", "--format=savedmodel", "--out=/proc/brainjax_model")
    assert not os.path.exists("/proc/brainjax_model")  # even root cannot write there
    assert "does not exist" in run(f"--workdir={workdir}", "--format=onnx", f"--out={tmp_path / 'missing' / 'm.onnx'}")
    nockpt = tmp_path / "nockpt"
    nockpt.mkdir()
    (nockpt / "config.json").write_text(open(os.path.join(workdir, "config.json")).read())
    assert "no checkpoint" in run(f"--workdir={nockpt}", "--format=savedmodel")
    assert not os.path.exists(nockpt / "export" / "model")


def test_readme_onnx_runner_decodes_as_training_and_predict(tmp_path):
    """The README's onnxruntime runner, run as written on an exported model, in a process
    that cannot import JAX or TensorFlow, on a JPEG and a DICOM file: the probabilities
    of --mode=predict for the same files, and ABSTAIN where predict abstains."""
    pytest.importorskip("jax2onnx")
    pytest.importorskip("onnxruntime")
    pydicom_data = pytest.importorskip("pydicom.data")
    from PIL import Image

    from brainjax import run
    from brainjax.data import phantom

    readme = open(os.path.join(ROOT, "README.md")).read()
    block = readme.split("Classifying a scan without JAX")[1].split("```python\n")[1].split("```")[0]
    assert len(block.strip().splitlines()) <= 18
    workdir, _, _ = _fake_run(tmp_path, "tiny", 32)
    # an abstention rule no prediction can pass: the runner must say ABSTAIN
    with open(os.path.join(workdir, inference.CALIBRATION_FILE), "w") as f:
        json.dump({"temperature": 1.3, "rule": "max_prob", "target_accuracy": 0.95, "thresholds": {"max_prob": 1.01}}, f)
    path = export.export(workdir, "onnx")
    jpeg = tmp_path / "scan.jpg"
    Image.fromarray(phantom.generate_slice(3, 0, 1, 80)[..., 0]).save(jpeg, quality=95)
    dicom = pydicom_data.get_testdata_file("MR_small.dcm")
    script = tmp_path / "runner.py"
    script.write_text("import sys\nfor m in ('jax', 'jaxlib', 'flax', 'tensorflow'): sys.modules[m] = None\n"
                      f"sys.path.insert(0, {ROOT!r})\n" + block.replace("runs/default/export/model.onnx", path))
    config = inference.inference_config(inference.load_run_config(workdir), workdir)
    for scan in (str(jpeg), dicom):
        out = subprocess.run([sys.executable, str(script), scan], cwd=str(tmp_path), capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().endswith("ABSTAIN")
        shown = eval(out.stdout.split(" ", 3)[3].rsplit(" ", 1)[0])  # the printed {class: probability}
        pred = run.predict_images(config, workdir, [scan])
        np.testing.assert_allclose(list(shown.values()), pred["probabilities"][0], atol=6e-4)
        assert bool(pred["abstain"][0])


def _gap_threshold(scores):
    """A threshold in the widest gap between `scores` (away from the ends), so both
    decisions occur and a float-level difference cannot flip one."""
    scores = np.sort(scores)
    gap = int(np.argmax(np.diff(scores)[1:-1])) + 1
    return float(scores[gap] + scores[gap + 1]) / 2


OOD_TOL = 1e-4  # ood_score, relative to max(1, |score|)


def assert_onnx_equals_predict(workdir, config, paths, capsys):
    """--mode=predict's probabilities, quality and ABSTAIN decisions on image files
    against the exported ONNX file's, run in onnxruntime with the sidecar's abstention
    rule. Returns the largest probability difference."""
    ort = pytest.importorskip("onnxruntime")
    from brainjax import run

    cal = inference.load_calibration(workdir)
    rule = cal["rule"]
    run_config = inference.inference_config(config, workdir)
    first = run.predict_images(run_config, workdir, paths)
    cal["thresholds"][rule] = _gap_threshold(first["probabilities"].max(-1)
                                             * (first["quality"] if rule == "quality" else 1.0))
    with open(os.path.join(workdir, inference.CALIBRATION_FILE), "w") as f:
        json.dump(cal, f)
    pred = run.predict_images(run_config, workdir, paths)
    assert 0 < sum(pred["abstain"]) < len(paths)
    capsys.readouterr()
    assert run.predict_files(run_config, workdir, paths) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [("ABSTAIN" in line) for line in printed] == list(pred["abstain"])

    path = export.export(workdir, "onnx")
    side = json.load(open(path + ".json"))
    assert side["temperature"] == cal["temperature"] and side["abstention"]["rule"] == rule
    assert side["standardize"]["method"] == run_config.model.standardize and side["class_names"] == CLASS_NAMES
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o["name"] for o in side["outputs"]]
    assert [o.name for o in sess.get_outputs()] == names == (
        ["probabilities"] + (["quality"] if run_config.model.quality_head.enabled else [])
        + (["ood_score"] if "ood" in cal else []))
    outputs = dict(zip(names, sess.run(names, {"images": pred["images"]})))
    worst = float(np.abs(outputs["probabilities"] - pred["probabilities"]).max())
    assert worst <= TOL
    if "quality" in outputs:
        assert float(np.abs(outputs["quality"] - pred["quality"]).max()) <= TOL
    if "ood_score" in outputs:  # relative: Mahalanobis scores run to the hundreds
        gap = np.abs(outputs["ood_score"] - pred["ood_score"]) / np.maximum(1.0, np.abs(pred["ood_score"]))
        assert float(gap.max()) <= OOD_TOL, gap
    score = outputs["probabilities"].max(-1) * (outputs["quality"] if rule == "quality" else 1.0)
    assert list(score < side["abstention"]["threshold"]) == list(pred["abstain"])
    return worst


@pytest.mark.parametrize("standardize", ["zscore_foreground", "percentile"])
def test_exported_onnx_equals_predict_on_image_files(tmp_path, scan_files, capsys, standardize):
    """Each standardisation, on a checkpoint of random weights with a temperature far
    from 1 (tests/test_trained_model.py does the same on a trained, calibrated model
    with the quality rule)."""
    pytest.importorskip("jax2onnx")
    workdir, _, _ = _fake_run(tmp_path, "tiny", 64, standardize=standardize)
    with open(os.path.join(workdir, inference.CALIBRATION_FILE), "w") as f:
        json.dump({"temperature": 0.5, "rule": "max_prob", "target_accuracy": 0.95,
                   "thresholds": {"max_prob": 0.5}}, f)
    worst = assert_onnx_equals_predict(workdir, inference.load_run_config(workdir), scan_files, capsys)
    print(f"{standardize}: max |onnx - predict| = {worst:.2e}")


def test_onnx_export_needs_no_tensorflow_datasets(tmp_path):
    """A runtime install without tensorflow-datasets (or TensorFlow) exports to ONNX."""
    pytest.importorskip("jax2onnx")
    workdir, _, _ = _fake_run(tmp_path, "tiny", 32)
    script = ("import sys; sys.modules['tensorflow_datasets'] = None; sys.modules['tensorflow'] = None\n"
              "from brainjax import export; sys.exit(export.main(sys.argv[1:]))\n")
    out = subprocess.run([sys.executable, "-c", script, f"--workdir={workdir}", "--format=onnx"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.path.isfile(os.path.join(workdir, "export", "model.onnx"))


def test_overwrite_replaces_only_a_previous_export(tmp_path):
    """An existing --out is refused; --overwrite replaces a previous export (known by its
    sidecar) and nothing else."""
    from brainjax.errors import UserError

    pytest.importorskip("jax2onnx")
    workdir, _, _ = _fake_run(tmp_path, "tiny", 32)
    out = str(tmp_path / "m.onnx")
    export.export(workdir, "onnx", out)
    first = open(out, "rb").read()
    with pytest.raises(UserError, match="pass --overwrite"):
        export.export(workdir, "onnx", out)
    os.utime(out, (0, 0))
    export.export(workdir, "onnx", out, overwrite=True)
    assert os.stat(out).st_mtime > 0 and open(out, "rb").read() == first  # replaced, by the same model
    mine = tmp_path / "mine.onnx"
    mine.write_bytes(b"a user's model")
    with pytest.raises(UserError, match="not a brainjax export"):
        export.export(workdir, "onnx", str(mine), overwrite=True)
    assert mine.read_bytes() == b"a user's model"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary file or folder left
