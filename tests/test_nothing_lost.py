"""Nothing a user owns is lost, and no flag is silently dropped: OOD folders named like a
split, a Kaggle download killed half-way, a changed image folder, a run killed before its
first checkpoint, outputs that would collide, and overrides at predict."""

import json
import os
import shutil
import sys

import pytest

from test_bad_inputs import copy_of_run
from test_image_folder import make_tree


def _smoke(data_dir, **fields):
    from configs import smoke

    config = smoke.get_config()
    config.data_dir, config.num_epochs = data_dir, 1
    config.eval.corruptions, config.eval.severities = ("gaussian_noise",), (3,)
    for k, v in fields.items():
        setattr(config, k, v)
    return config


def _copy_images(scan_files, folder) -> str:
    os.makedirs(folder)
    for path in scan_files[:4]:
        shutil.copy(path, folder)
    return str(folder)


def test_ood_folders_named_like_a_split_or_alike_are_scored_under_their_full_paths(data_dir, scan_files, tmp_path):
    """Two eval.ood_dirs folders called `test` (like the test split, and like each other):
    the run finishes, and the report keeps the test split and both folders apart."""
    from brainjax import train

    site_b, site_c = (_copy_images(scan_files, tmp_path / site / "test") for site in ("siteB", "siteC"))
    config = _smoke(data_dir)
    config.eval.ood_dirs = (site_b, site_c)
    report = train.train_and_evaluate(config, str(tmp_path / "run"))
    vs = report["ood"]["methods"][report["ood"]["method"]]["vs"]
    assert sorted(vs) == sorted([site_b, site_c, "test"])
    assert vs[site_b]["auroc"] != vs["test"]["auroc"]
    assert set(report["ood"]["histogram"]) == {"edges", "validation", "test", site_b, site_c}


def _fake_kagglehub(source: str):
    class Hub:
        @staticmethod
        def dataset_download(handle):
            return source

    return Hub


def test_a_kaggle_download_killed_half_way_is_never_used_and_overwrites_nothing(tmp_path, monkeypatch):
    from brainjax.data import kaggle

    source = tmp_path / "kaggle_cache"
    for split in ("Training", "Testing"):
        for i in range(3):
            (source / split / "glioma_tumor").mkdir(parents=True, exist_ok=True)
            (source / split / "glioma_tumor" / f"{i}.jpg").write_bytes(b"x" * 10)
    (source / "README.txt").write_text("the download's readme")
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "README.txt").write_text("the user's own notes")
    monkeypatch.setitem(sys.modules, "kagglehub", _fake_kagglehub(str(source)))

    def killed_copy(src, dst, **kw):  # Training/ and Testing/ begun, Testing/ empty: then the kill
        os.makedirs(os.path.join(dst, "Testing"), exist_ok=True)
        os.makedirs(os.path.join(dst, "Training", "glioma_tumor"), exist_ok=True)
        shutil.copy(os.path.join(src, "Training", "glioma_tumor", "0.jpg"), os.path.join(dst, "Training", "glioma_tumor"))
        raise KeyboardInterrupt  # the kill, half-way through the copy

    monkeypatch.setattr(kaggle.shutil, "copytree", killed_copy)
    with pytest.raises(KeyboardInterrupt):
        kaggle.fetch("kaggle", "brain_tumor_mri/sartaj", str(manual))
    assert not kaggle.already_present(str(manual))  # the half copy is not taken for the data
    assert (manual / "README.txt").read_text() == "the user's own notes"
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "kagglehub", _fake_kagglehub(str(source)))
    kaggle.fetch("kaggle", "brain_tumor_mri/sartaj", str(manual))
    assert kaggle.already_present(str(manual))
    landed = manual / "brain-tumor-classification-mri"
    assert sorted(os.listdir(landed / "Testing" / "glioma_tumor")) == ["0.jpg", "1.jpg", "2.jpg"]
    assert (manual / "README.txt").read_text() == "the user's own notes"
    assert (landed / "README.txt").read_text() == "the download's readme"


def test_the_image_folder_build_key_follows_every_file(tmp_path):
    """Adding, removing, editing or moving a scan between class folders gives a new build."""
    from brainjax.data import image_folder

    tree = tmp_path / "scans"
    make_tree(str(tree), {"a": 0, "b": 1}, per_class=3)
    names = {image_folder.folder_config(str(tree)).name}
    shutil.copy(tree / "a" / "0.png", tree / "a" / "extra.png")
    names.add(image_folder.folder_config(str(tree)).name)
    os.rename(tree / "a" / "extra.png", tree / "b" / "extra.png")
    names.add(image_folder.folder_config(str(tree)).name)
    os.remove(tree / "b" / "extra.png")
    os.remove(tree / "b" / "0.png")
    names.add(image_folder.folder_config(str(tree)).name)
    assert len(names) == 4
    assert image_folder.folder_config(str(tree)).name in names  # unchanged tree: the same key


def test_a_run_killed_before_its_first_checkpoint_leaves_no_torn_metrics(data_dir, tmp_path):
    """The killed run wrote config.json, two metric records and half a third; the next
    start (fresh: there is no checkpoint) cuts metrics.jsonl back to step 0."""
    from brainjax import train

    workdir = str(tmp_path / "run")
    config = _smoke(data_dir)
    train.write_config(config, workdir, ["glioma", "meningioma", "no_tumor", "pituitary"])
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.write('{"kind": "train_window", "step": 2, "loss": 999.0}\n{"kind": "train_window", "step": 4, '
                '"loss": 999.0}\n{"kind": "train_win')
    train.train_and_evaluate(config, workdir)
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    steps = [r["step"] for r in records]
    assert steps == sorted(steps) and len(set((r["kind"], r["step"]) for r in records)) == len(records)
    assert records[0]["step"] == config.log_every_steps and all(r.get("loss") != 999.0 for r in records)


def test_outputs_of_inputs_with_one_name_never_collide_nor_replace_an_input(one_epoch_run, scan_files, tmp_path,
                                                                            capsys):
    from brainjax import inference, run

    workdir = copy_of_run(one_epoch_run, tmp_path)
    a, b = tmp_path / "a" / "scan.png", tmp_path / "b" / "scan.png"
    for path, source in ((a, scan_files[1]), (b, scan_files[3])):
        path.parent.mkdir()
        shutil.copy(source, path)
    config = inference.inference_config(one_epoch_run[1], workdir)
    assert run.predict_files(config, workdir, [str(a), str(b)], explain=True) == 0
    wrote = [line.split(": wrote ")[1] for line in capsys.readouterr().out.splitlines() if ": wrote " in line]
    assert len(set(wrote)) == 2 and all(os.path.isfile(p) for p in wrote)

    folder = tmp_path / "mine"
    folder.mkdir()
    image = folder / "gallery.png"
    shutil.copy(scan_files[1], image)
    before = image.read_bytes()
    assert run.gallery_files(config, str(folder), [str(image)]) == 0
    assert image.read_bytes() == before
    assert os.path.isfile(folder / "gallery" / "gallery.png")


def test_an_abstention_rule_set_at_predict_is_applied(one_epoch_run, scan_files, tmp_path, capsys):
    """calibration.json with a max_prob threshold nothing reaches and an OOD threshold
    nothing exceeds: the fitted rule (ood_max_prob) abstains on every file, the rule
    given on the command line (ood) on none."""
    from brainjax import run

    workdir = copy_of_run(one_epoch_run, tmp_path)
    path = os.path.join(workdir, "calibration.json")
    cal = json.load(open(path))
    cal["rule"], cal["thresholds"]["max_prob"], cal["ood"]["threshold"] = "ood_max_prob", 1.01, 1e30
    with open(path, "w") as f:
        json.dump(cal, f)
    flags = one_epoch_run[1].copy_and_resolve_references()
    counts = {}
    for rule, overrides in (("ood_max_prob", []), ("ood", ["eval.abstain_rule"])):
        flags.eval.abstain_rule = rule
        assert run.main(flags, workdir, "predict", scan_files, overrides=overrides) == 0
        counts[rule] = capsys.readouterr().out.count("ABSTAIN")
    assert counts == {"ood_max_prob": len(scan_files), "ood": 0}
    flags.eval.abstain_rule = "quality"  # no threshold was fitted for it (no quality head): refused
    assert run.main(flags, workdir, "predict", scan_files, overrides=["eval.abstain_rule"]) == 1
    assert "fitted no threshold" in capsys.readouterr().err
