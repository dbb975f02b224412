"""Bring your own scans: `image_folder` (any folder of class folders, any class count),
class names carried from the data to report, predict and export; the Kaggle download's
error paths; the `brainjax` command's config names; missing extras as one line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from brainjax.data import phantom
from brainjax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_slice(path, pixels):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def make_tree(root, folders, per_class, test_per_class=0, seed=7):
    """Phantom slices as PNG files under root/<folder>/ (and root/test/<folder>/), the
    folder's phantom class deciding the anatomy."""
    for k, (folder, label) in enumerate(folders.items()):
        for i in range(per_class):
            write_slice(os.path.join(root, folder, f"{i}.png"), phantom.generate_slice(seed, 1000 * k + i, label, 64)[..., 0])
        for i in range(test_per_class):
            write_slice(os.path.join(root, "test", folder, f"t{i}.png"),
                        phantom.generate_slice(seed + 1, 1000 * k + i, label, 64)[..., 0])


def small_run_config(data_dir, manual_dir, **fields):
    from configs import smoke

    config = smoke.get_config()
    config.dataset, config.manual_dir, config.data_dir = "image_folder", str(manual_dir), str(data_dir)
    config.train_split, config.val_split, config.test_split = "train_sub", "validation", "test_dedup"
    config.num_epochs = 1
    config.batch_size = 16
    config.eval.corruptions, config.eval.severities = ("gaussian_noise",), (3,)
    for k, v in fields.items():
        setattr(config, k, v)
    return config


@pytest.fixture(scope="module")
def three_class_run(tmp_path_factory):
    """A 3-class tree with a test folder and two planted near duplicates of training
    images in it (one brightened, one mirrored), trained for one epoch."""
    from brainjax import train

    base = tmp_path_factory.mktemp("three")
    tree = base / "scans"
    make_tree(str(tree), {"astro": 0, "menin": 1, "pitu": 3}, per_class=20, test_per_class=6)
    src = np.asarray(Image.open(tree / "astro" / "3.png"), np.float32)
    write_slice(str(tree / "test" / "astro" / "near_bright.png"), np.clip(src * 1.15, 0, 255))
    write_slice(str(tree / "test" / "menin" / "near_mirror.png"),
                np.asarray(Image.open(tree / "menin" / "5.png"))[:, ::-1])
    config = small_run_config(base / "tfds", tree)
    workdir = str(base / "run")
    train.train_and_evaluate(config, workdir)
    return workdir, config, tree


def test_three_class_folder_trains_reports_predicts_and_exports(three_class_run, tmp_path):
    from brainjax import export, run
    from brainjax.data import pipeline

    workdir, config, tree = three_class_run
    names = ["astro", "menin", "pitu"]
    builder = pipeline.builder_for(config)
    build = json.load(open(os.path.join(builder.report_dir(), "build_report.json")))
    removed = {r["file"]: r for r in build["test_removed"]}
    assert removed["test/astro/near_bright.png"]["match"] == "astro/3.png"
    assert removed["test/menin/near_mirror.png"]["match"] == "menin/5.png"
    assert all(r["reason"] == "near duplicate in Training" for r in removed.values())
    splits = build["splits"]
    assert splits["test"]["count"] == 3 * 6 + 2
    assert splits["test_dedup"]["count"] == splits["test"]["count"] - len(removed)
    filenames = {ex["filename"].decode() for ex in builder.as_dataset(split="test_dedup").as_numpy_iterator()}
    assert not filenames & set(removed)

    report = json.load(open(os.path.join(workdir, "report.json")))
    assert report["class_names"] == names
    assert np.asarray(report["clean"]["confusion_matrix"]).shape == (3, 3)
    assert sum(map(sum, report["clean"]["confusion_matrix"])) == splits["test_dedup"]["count"]
    assert report["clean"]["macro_f1_classes"] == names
    assert json.load(open(os.path.join(workdir, "config.json")))["class_names"] == names
    assert os.path.isfile(os.path.join(workdir, "confusion_matrix.png"))

    files = [str(tree / "test" / "pitu" / "t0.png"), str(tree / "test" / "astro" / "t1.png")]
    pred = run.predict_images(config, workdir, files)
    assert pred["class_names"] == names and pred["probabilities"].shape == (2, 3)
    np.testing.assert_allclose(pred["probabilities"].sum(axis=1), 1.0, rtol=1e-5)

    onnx_path = export.export(workdir, "onnx", str(tmp_path / "model.onnx"))
    side = json.load(open(onnx_path + ".json"))
    assert side["class_names"] == names and side["outputs"][0] == {"name": "probabilities", "dtype": "float32", "shape": ["N", 3]}
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_path)
    # the deployed graph gives predict's probabilities for the pixels predict decoded
    np.testing.assert_allclose(session.run(None, {"images": pred["images"]})[0], pred["probabilities"], atol=1e-5)


def test_two_class_folder_with_a_seeded_test_split_through_predict(tmp_path):
    """yes/no folders, no test folder: a seeded, stratified test share."""
    from brainjax import run, train

    tree = tmp_path / "br35h"
    make_tree(str(tree), {"no": 2, "yes": 0}, per_class=20)
    config = small_run_config(tmp_path / "tfds", tree, test_fraction=0.2)
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
    report = json.load(open(os.path.join(workdir, "report.json")))
    assert report["class_names"] == ["no", "yes"]
    cm = np.asarray(report["clean"]["confusion_matrix"])
    assert cm.shape == (2, 2) and cm.sum(1).tolist() == [4, 4]  # 20% of 20 per class
    pred = run.predict_images(config, workdir, [str(tree / "yes" / "0.png")])
    assert pred["class_names"] == ["no", "yes"] and pred["probabilities"].shape == (1, 2)
    np.testing.assert_allclose(pred["probabilities"].sum(-1), 1.0, rtol=1e-5)


def test_class_map_merges_and_renames_folders(tmp_path):
    from brainjax.data import image_folder

    for folder in ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"):
        os.makedirs(tmp_path / folder)
    cfg = image_folder.folder_config(str(tmp_path), "no_tumor=normal, glioma_tumor=tumor,meningioma_tumor=tumor,"
                                                    "pituitary_tumor=tumor")
    assert cfg.class_names == ("normal", "tumor")
    assert dict(cfg.folder_labels) == {"glioma_tumor": 1, "meningioma_tumor": 1, "no_tumor": 0, "pituitary_tumor": 1}
    plain = image_folder.folder_config(str(tmp_path))
    assert plain.class_names == ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")
    assert plain.name != cfg.name  # another class map is another prepared dataset
    with pytest.raises(UserError, match="not 'folder=name'"):
        image_folder.parse_class_map("no_tumor")
    with pytest.raises(UserError, match=r"\['gliomma'\] that are not in"):
        image_folder.folder_config(str(tmp_path), "gliomma=tumor")


@pytest.mark.parametrize("case", ["missing", "empty", "one_class", "no_readable_image", "unknown_test_class"])
def test_bad_folders_are_clear_errors(tmp_path, case):
    from brainjax.data import pipeline

    tree = tmp_path / "scans"
    if case != "missing":
        os.makedirs(tree)
    if case == "one_class":
        make_tree(str(tree), {"glioma": 0}, per_class=2)
    if case == "no_readable_image":
        for folder in ("a", "b"):
            os.makedirs(tree / folder)
            (tree / folder / "x.png").write_bytes(b"not an image")
    if case == "unknown_test_class":
        make_tree(str(tree), {"a": 0, "b": 1}, per_class=2)
        os.makedirs(tree / "test" / "c")
    expected = {"missing": "no such folder", "empty": "no class folders", "one_class": "only one class",
                "no_readable_image": "none of the 2 files is a readable image",
                "unknown_test_class": r"class folders \['c'\] are not among"}[case]
    before = sorted(os.walk(tree)) if case != "missing" else None
    with pytest.raises(UserError, match=expected) as err:
        pipeline.prepared_builder("image_folder", str(tmp_path / "tfds"), str(tree))
    assert "\n" not in str(err.value)
    if case != "missing":
        assert sorted(os.walk(tree)) == before  # nothing created or removed in the user's folder


def test_kaggle_download_error_paths(tmp_path, monkeypatch):
    from brainjax.data import kaggle

    target = str(tmp_path / "sartaj")
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # not installed
    with pytest.raises(UserError, match=r"pip install 'brainjax\[data\]'"):
        kaggle.fetch("kaggle", "brain_tumor_mri/sartaj", target)

    class NoNetwork:
        @staticmethod
        def dataset_download(handle):
            raise ConnectionError("Failed to resolve 'www.kaggle.com'\nmore detail")

    monkeypatch.setitem(sys.modules, "kagglehub", NoNetwork)
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UserError) as err:
        kaggle.fetch("kaggle", "brain_tumor_mri/sartaj", target)
    message = str(err.value)
    assert "\n" not in message and "Failed to resolve" in message and "KAGGLE_USERNAME" in message
    assert "sartajbhuvaji/brain-tumor-classification-mri" in message and not os.path.exists(target)

    os.makedirs(os.path.join(target, "x", "Training")), os.makedirs(os.path.join(target, "x", "Testing"))
    kaggle.fetch("kaggle", "brain_tumor_mri/sartaj", target)  # already there: no download attempted
    with pytest.raises(UserError, match="not 'image_folder'"):
        kaggle.fetch("kaggle", "image_folder", target)
    with pytest.raises(UserError, match="the only source is 'kaggle'"):
        kaggle.fetch("zenodo", "brain_tumor_mri/sartaj", target)


def test_config_by_bundled_name(tmp_path):
    from brainjax import cli

    smoke = os.path.join(ROOT, "configs", "smoke.py")
    assert os.path.samefile(cli.resolve_config_arg("smoke"), smoke)
    assert os.path.samefile(cli.resolve_config_arg("configs/smoke.py"), smoke)
    own = tmp_path / "mine.py"
    own.write_text("from configs import smoke\nget_config = smoke.get_config\n")
    assert cli.resolve_config_arg(str(own)) == str(own)
    argv = cli.with_resolved_config(["brainjax", "--workdir=w", "--config.num_epochs=1"])
    assert argv[1] == "--config=" + os.path.join(cli.bundled_config_dir(), "default.py")
    with pytest.raises(SystemExit):
        cli.resolve_config_arg("no_such_config")


def _blocked(modules, argv):
    """python -c running `argv` with `modules` made unimportable (a machine without the extra)."""
    return ("import sys\n"
            f"for m in {modules!r}: sys.modules[m] = None\n"
            f"sys.argv = {argv!r}\n"
            "from brainjax import cli\ncli.run()\n")


def test_without_extras_predict_and_export_say_which_extra(one_epoch_run, tmp_path, scan_files):
    """predict needs no TensorFlow (the decoder is numpy + PIL); a DICOM file without
    pydicom is one ERROR line naming the extra; export without its converter, one error."""
    from pydicom.data import get_testdata_file

    workdir, _ = one_epoch_run
    predict = subprocess.run([sys.executable, "-c", _blocked(["tensorflow", "tensorflow_datasets"], [
        "brainjax", f"--workdir={workdir}", "--mode=predict", f"--images={scan_files[0]}"])],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert predict.returncode == 0 and "Traceback" not in predict.stderr, predict.stderr[-2000:]
    assert predict.stdout.startswith(f"{scan_files[0]}: ")
    dicom = subprocess.run([sys.executable, "-c", _blocked(["pydicom"], [
        "brainjax", f"--workdir={workdir}", "--mode=predict", f"--images={get_testdata_file('MR_small.dcm')},"
        f"{scan_files[0]}"])], cwd=ROOT, capture_output=True, text=True, timeout=300)
    errors = [line for line in dicom.stderr.splitlines() if line.startswith("ERROR")]
    assert dicom.returncode == 1 and "Traceback" not in dicom.stderr, dicom.stderr[-2000:]
    assert len(errors) == 1 and "MR_small.dcm" in errors[0] and "pip install 'brainjax[data]'" in errors[0]
    assert dicom.stdout.startswith(f"{scan_files[0]}: ")  # the other file is still scored
    code = ("import sys\nsys.modules['jax2onnx'] = None\nfrom brainjax import export\n"
            f"sys.exit(export.main(['--workdir={workdir}', '--format=onnx', '--out={tmp_path}/m.onnx']))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == ("brainjax: error: onnx export: the optional package "
                                                   "jax2onnx is not installed; pip install 'brainjax[export]'")
    assert not os.path.exists(tmp_path / "m.onnx")
