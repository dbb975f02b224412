"""brain_tumor_mri builder: real-world files, duplicates, leakage-aware splits, the real
Sartaj folder (skipped when ../shared/data/sartaj is absent)."""

import io
import json
import os
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from brainjax.data import images, phantom
from brainjax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SARTAJ = os.path.join(ROOT, "..", "shared", "data", "sartaj")
DIRS = ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")


def _slice(i, label, size=96):
    return phantom.generate_slice(99, i, label, size)[..., 0]


def _save(path, array, fmt="JPEG", **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, format=fmt, **kw)


@pytest.fixture(scope="module")
def fake_tree(tmp_path_factory):
    """A small Sartaj-like tree with every kind of awkward file and planted duplicates."""
    root = tmp_path_factory.mktemp("fake") / "Brain-Tumor-Classification-DataSet"
    for split, n in (("Training", 10), ("Testing", 4)):
        for label, d in enumerate(DIRS):
            for i in range(n):
                idx = (0 if split == "Training" else 1000) + i
                _save(root / split / d / f"gg ({i}).jpg", _slice(idx, label), quality=95)
    tr, te = root / "Training" / "glioma_tumor", root / "Testing" / "glioma_tumor"
    # awkward but valid files (Training/meningioma_tumor)
    m = root / "Training" / "meningioma_tumor"
    _save(m / "UPPER.JPG", _slice(50, 1))
    _save(m / "png_named.jpg", _slice(51, 1), fmt="PNG")
    Image.fromarray(_slice(52, 1)).convert("RGBA").save(m / "rgba.png")
    Image.fromarray(_slice(53, 1)).convert("P").save(m / "palette.png")
    Image.fromarray((_slice(54, 1).astype(np.uint16) * 257)).save(m / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    Image.fromarray(_slice(55, 1)[:, :60]).convert("RGB").save(m / "exif rotated (1).jpg", exif=exif)
    # bad files
    (m / "truncated.jpg").write_bytes((tr / "gg (0).jpg").read_bytes()[:300])
    (m / "notes.jpg").write_text("not an image")
    # planted duplicates of Training/glioma_tumor/gg (1..3).jpg in Testing
    shutil.copy(tr / "gg (1).jpg", te / "exact copy.jpg")
    near = np.asarray(Image.fromarray(_slice(2, 0)).resize((80, 80), Image.BILINEAR))
    _save(te / "near copy.jpg", near, quality=70)
    _save(te / "mirrored copy.jpg", _slice(3, 0)[:, ::-1], quality=90)
    shutil.copy(te / "gg (0).jpg", te / "test internal dup.jpg")
    return str(root)


def _build(manual_dir, data_dir):
    from brainjax.data.pipeline import prepared_builder

    b = prepared_builder("brain_tumor_mri/sartaj", str(data_dir), str(manual_dir))
    report = json.load(open(os.path.join(b.report_dir(), "build_report.json")))
    return b, report


def _names(builder, split):
    import tensorflow_datasets as tfds

    return [ex["filename"].decode() for ex in tfds.as_numpy(builder.as_dataset(split=split))]


def test_builder_on_awkward_files_and_duplicates(fake_tree, tmp_path):
    b, report = _build(fake_tree, tmp_path)
    splits = {k: v.num_examples for k, v in b.info.splits.items()}
    assert splits["train"] == 40 + 6  # 6 awkward-but-valid files, the 2 bad ones skipped
    assert splits["test"] == 16 + 4
    assert sorted(u["file"] for u in report["unreadable"]) == [
        "Training/meningioma_tumor/notes.jpg", "Training/meningioma_tumor/truncated.jpg"]
    removed = {r["file"]: r for r in report["test_removed"]}
    assert removed["Testing/glioma_tumor/exact copy.jpg"]["reason"] == "exact duplicate in Training"
    assert removed["Testing/glioma_tumor/near copy.jpg"]["match"] == "Training/glioma_tumor/gg (2).jpg"
    assert removed["Testing/glioma_tumor/mirrored copy.jpg"]["match"] == "Training/glioma_tumor/gg (3).jpg"
    assert removed["Testing/glioma_tumor/test internal dup.jpg"]["reason"] == "duplicate within Testing"
    assert len(removed) == 4 and splits["test_dedup"] == 16
    assert report["test_with_duplicate_in_train"] == 3
    assert "Testing/glioma_tumor/exact copy.jpg" not in _names(b, "test_dedup")
    names = _names(b, "train")
    assert "Training/glioma_tumor/gg (3).jpg" in names and "Training/meningioma_tumor/UPPER.JPG" in names
    md = open(os.path.join(b.report_dir(), "dedup_report.md")).read()
    assert "truncated.jpg" in md and "mirrored copy.jpg" in md


def test_decoded_features(fake_tree, tmp_path):
    import tensorflow_datasets as tfds

    b, _ = _build(fake_tree, tmp_path)
    examples = {ex["filename"].decode(): ex for ex in tfds.as_numpy(b.as_dataset(split="train"))}
    rot = examples["Training/meningioma_tumor/exif rotated (1).jpg"]["image"]
    assert rot.shape == (60, 96, 1)  # 96x60 stored, EXIF rotation applied
    six = examples["Training/meningioma_tumor/sixteen.png"]["image"][..., 0].astype(float)
    src = _slice(54, 1).astype(float)
    np.testing.assert_allclose(six, src * 255 / src.max(), atol=1.01)  # 16-bit rescaled to its range
    assert examples["Training/meningioma_tumor/rgba.png"]["image"].shape == (96, 96, 1)
    assert {ex["label"] for ex in examples.values()} == {0, 1, 2, 3}


def test_splits_are_stratified_disjoint_and_group_aware(fake_tree, tmp_path):
    b, _ = _build(fake_tree, tmp_path)
    train, sub, val = set(_names(b, "train")), _names(b, "train_sub"), _names(b, "validation")
    assert set(sub) | set(val) == train and not set(sub) & set(val)
    import tensorflow_datasets as tfds

    labels = [ex["label"] for ex in tfds.as_numpy(b.as_dataset(split="validation"))]
    assert sorted(np.bincount(labels, minlength=4)) == [2, 2, 2, 3]  # 20% of 10/10/10/16
    from brainjax.data.folder_splits import stratified_group_split

    labels = np.repeat([0, 1], 50)
    groups = np.arange(100)
    groups[10:14] = 10  # one duplicate group
    held = stratified_group_split(labels, groups, 0.2, seed=3)
    assert len(set(held[10:14])) == 1  # the group is never split
    assert abs(int(held[:50].sum()) - 10) <= 3 and abs(int(held[50:].sum()) - 10) <= 3
    np.testing.assert_array_equal(held, stratified_group_split(labels, groups, 0.2, seed=3))


def test_builds_from_the_kaggle_zip(fake_tree, tmp_path):
    os.makedirs(tmp_path / "download")
    zpath = tmp_path / "download" / "archive.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for dirpath, _, files in os.walk(fake_tree):
            for f in files:
                full = os.path.join(dirpath, f)
                z.write(full, os.path.relpath(full, os.path.dirname(fake_tree)))
    b, report = _build(tmp_path / "download", tmp_path / "data")  # tfds manual_dir: the folder with the zip
    assert b.info.splits["train"].num_examples == 46 and len(report["unreadable"]) == 2


def test_wrong_layout_and_empty_folder_are_clear(tmp_path):
    os.makedirs(tmp_path / "wrong" / "Training" / "glioma")
    os.makedirs(tmp_path / "wrong" / "Testing" / "glioma")
    with pytest.raises(UserError, match=r"expected class folders .*glioma_tumor.* found \['glioma'\]"):
        _build(tmp_path / "wrong", tmp_path / "d1")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(UserError, match="is empty: expected the dataset folder"):
        _build(tmp_path / "empty", tmp_path / "d2")
    os.makedirs(tmp_path / "elsewhere" / "photos")
    with pytest.raises(UserError, match=r"expected a folder with Training/ and Testing/.*found \['photos'\]"):
        _build(tmp_path / "elsewhere", tmp_path / "d3")


def test_nickparvar_layout_maps_to_the_same_labels(tmp_path):
    from brainjax.data.pipeline import prepared_builder

    root = tmp_path / "nick"
    for split in ("Training", "Testing"):
        for label, d in enumerate(("glioma", "meningioma", "notumor", "pituitary")):
            for i in range(2):
                _save(root / split / d / f"Tr-{d[:2]}_{i:04d}.jpg", _slice(10 * label + i + (50 if split == "Testing" else 0), label))
    b = prepared_builder("brain_tumor_mri/nickparvar", str(tmp_path / "data"), str(root))
    import tensorflow_datasets as tfds

    assert b.info.features["label"].names == ["glioma", "meningioma", "no_tumor", "pituitary"]
    by_name = {ex["filename"].decode(): ex["label"] for ex in tfds.as_numpy(b.as_dataset(split="train"))}
    assert by_name["Training/notumor/Tr-no_0000.jpg"] == 2 and len(by_name) == 8


def test_near_duplicate_detection_is_mirror_invariant_and_specific():
    idx = images.DuplicateIndex()
    base = _slice(7, 0, 128)
    variants = {"orig": base, "mirror": base[:, ::-1], "brighter": np.clip(base * 1.2, 0, 255).astype(np.uint8),
                "small": np.asarray(Image.fromarray(base).resize((90, 90), Image.BILINEAR))}
    for name, arr in variants.items():
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=85)
        idx.add(name, buf.getvalue(), arr)
    for i in range(6):  # different anatomy, same class: must not match
        other = _slice(100 + i, 0, 128)
        idx.add(f"other{i}", other.tobytes(), other)
    _, near = images.duplicate_groups(idx)
    assert len(near) == 1 and sorted(idx.names[i] for i in near[0]) == ["brighter", "mirror", "orig", "small"]


@pytest.mark.skipif(not os.path.isdir(SARTAJ), reason="../shared/data/sartaj not present")
def test_real_sartaj_folder(tmp_path):
    b, report = _build(SARTAJ, tmp_path)
    per_class = {k: v["per_class"] for k, v in report["splits"].items()}
    assert per_class["train"] == {"glioma": 826, "meningioma": 822, "no_tumor": 395, "pituitary": 827}
    assert per_class["test"] == {"glioma": 100, "meningioma": 115, "no_tumor": 105, "pituitary": 74}
    assert report["unreadable"] == []
    assert report["exact_redundant_copies"] == 237
    assert report["test_with_duplicate_in_train"] == 259
    assert per_class["test_dedup"]["no_tumor"] == 0  # all 105 no_tumor test images leak
    assert len(report["cross_label_groups"]) == 2
    assert b.info.splits["train_sub"].num_examples + b.info.splits["validation"].num_examples == 2870


FIGSHARE = os.path.join(ROOT, "..", "shared", "data", "figshare")


@pytest.mark.slow
@pytest.mark.skipif(not (os.path.isdir(SARTAJ) and os.path.isdir(FIGSHARE)),
                    reason="../shared/data/sartaj or ../shared/data/figshare not present")
def test_sartaj_and_figshare_provenance_finds_the_known_overlap(tmp_path):
    """configs/multisite.py: the Figshare README counts 2,292 Figshare slices with a Sartaj
    copy (labels disagreeing on 6); the cross-source check must find at least 2,200, keep
    them out of every held-out side, and name the disagreements."""
    import json

    from brainjax.data import pipeline
    from configs import multisite

    config = multisite.get_config()
    config.data_dir = str(tmp_path / "tfds")
    cwd = os.getcwd()
    os.chdir(ROOT)  # the config's manual_dir paths are relative to the repository
    try:
        builder = pipeline.builder_for(config)
    finally:
        os.chdir(cwd)
    prov = json.load(open(os.path.join(builder.report_dir(), "provenance.json")))
    pairs = {(p["a"], p["b"]): p for p in prov["pairs"]}
    assert pairs[("figshare", "sartaj")]["copies"] >= 2200
    assert pairs[("sartaj", "figshare")]["per_class"]["no_tumor"] == 0
    assert pairs[("figshare", "sartaj")]["labels_disagree"] >= 1
    kept = {s: {ex["filename"].decode() for ex in builder.as_dataset(split=s).as_numpy_iterator()}
            for s in ("validation", "test")}
    for r in prov["removed"]:
        assert f"{r['source']}/{r['name']}" not in kept.get(r["role"], set())
