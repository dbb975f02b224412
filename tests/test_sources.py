"""Several sources in one run (config.sources): cross-source provenance, per-source
reports, a held-out source, the weighted draw, --mode=loso, bad source configs, and the
equality of 2 processes x 2 devices with 1 x 4 over two sources."""

import glob
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = ["--config=configs/smoke_sources.py", "--config.eval.corruptions=('gaussian_noise',)",
         "--config.eval.severities=(3,)"]


def launch(*argv, env=None, check=True):
    argv = sorted(argv, key=lambda a: not a.startswith("--config="))  # --config first (absl config_flags)
    out = subprocess.run([sys.executable, "launch.py", *argv], cwd=ROOT, capture_output=True, text=True,
                         env=env or os.environ, timeout=600)
    if check:
        assert out.returncode == 0, out.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def sources_data(tmp_path_factory):
    """A tfds data_dir for the two small phantom sites (built by the first run)."""
    return str(tmp_path_factory.mktemp("tfds_sources"))


def sources_config(data_dir, **fields):
    from configs import smoke_sources

    config = smoke_sources.get_config()
    config.data_dir = data_dir
    for key, value in fields.items():
        setattr(config, key, value)
    return config


def pipeline_of(config):
    from brainjax.data.pipeline import InputPipeline

    return InputPipeline(config, num_local_devices=1)


# --- provenance -------------------------------------------------------------------------

def write_site(folder, slices, planted=()):
    """Two class folders of phantom slices as PNG; `planted`: (name, image) written as given."""
    for cls in ("glioma", "no_tumor"):
        os.makedirs(os.path.join(folder, cls), exist_ok=True)
    for i, (label, gray) in enumerate(slices):
        Image.fromarray(gray).save(os.path.join(folder, ("glioma", "no_tumor")[label], f"s{i:03d}.png"))
    for name, gray in planted:
        Image.fromarray(gray).save(os.path.join(folder, name), quality=85)


def test_provenance_finds_planted_copies_resized_reencoded_and_flipped(tmp_path):
    """Site B holds 6 copies of site A's slices (resized, re-encoded as JPEG, mirrored),
    two of them under another label, among 24 slices of its own: provenance counts exactly
    those 6 in each direction, the label disagreements, and removes B's copies from every
    split after A's training copy."""
    from brainjax.data import phantom, pipeline

    rng = np.random.default_rng(0)
    a = [(i % 2, phantom.generate_slice(100, i, i % 2 * 2)[..., 0]) for i in range(24)]
    b = [(i % 2, phantom.generate_slice(900, i, i % 2 * 2, weighting="t2")[..., 0]) for i in range(24)]
    picks = rng.choice(24, 6, replace=False)
    planted = []
    for n, k in enumerate(picks):
        label, gray = a[k]
        img = Image.fromarray(gray)
        if n % 3 == 0:
            img = img.resize((96, 96), Image.BILINEAR)
        if n % 3 == 1:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        cls = ("glioma", "no_tumor")[1 - label if n < 2 else label]  # two copies filed under the other class
        planted.append((f"{cls}/copy{n}.{'jpg' if n % 3 == 2 else 'png'}", np.asarray(img)))
    write_site(str(tmp_path / "A"), a)
    write_site(str(tmp_path / "B"), b, planted)
    from configs import default

    config = sources_config(str(tmp_path / "tfds"))
    config.sources = (default.source("a", "image_folder", manual_dir=str(tmp_path / "A"),
                                     train_split="train_sub", val_split="validation", test_split="test"),
                      default.source("b", "image_folder", manual_dir=str(tmp_path / "B"),
                                     train_split="train_sub", val_split="validation", test_split="test"))
    builder = pipeline.builder_for(config)
    prov = json.load(open(os.path.join(builder.report_dir(), "provenance.json")))
    pairs = {(p["a"], p["b"]): p for p in prov["pairs"]}
    assert pairs[("b", "a")]["copies"] == 6
    assert pairs[("a", "b")]["copies"] == 6
    assert pairs[("b", "a")]["labels_disagree"] == 2
    assert os.path.isfile(os.path.join(builder.report_dir(), "provenance.md"))
    # every kept copy of an A training image is in training; none sits in another split
    names = {s: set() for s in ("train", "validation", "test")}
    for split in names:
        if split in builder.info.splits:
            for ex in builder.as_dataset(split=split).as_numpy_iterator():
                names[split].add(ex["filename"].decode())
    a_train = {n for n in names["train"] if n.startswith("a/")}
    for r in prov["removed"]:
        assert f"{r['source']}/{r['name']}" not in names[r["role"]]
    copies_held_out = [n for s in ("validation", "test") for n in names[s] if "/copy" in n]
    for name in copies_held_out:  # a copy outside training: its original is not in training either
        original = [r for r in prov["removed"] if r["name"] in name]
        assert not original
    assert a_train


def test_the_two_phantom_sites_have_no_cross_source_copies(sources_data):
    """Different patients rendered with another sequence are not copies: nothing is
    reported or removed (the threshold's false-positive side)."""
    from brainjax.data import pipeline

    builder = pipeline.builder_for(sources_config(sources_data))
    prov = json.load(open(os.path.join(builder.report_dir(), "provenance.json")))
    assert [p["copies"] for p in prov["pairs"]] == [0, 0]
    assert prov["removed"] == []
    assert builder.info.splits["train"].num_examples == 2 * 720
    assert builder.info.splits["test"].num_examples == 2 * 120


# --- the draw and the held-out source ---------------------------------------------------

def epoch_sources(pipe, config, epoch):
    return np.concatenate([b["source"].reshape(-1) for b in pipe.train_epoch(config.train_split, epoch, config.seed)])


def test_weighted_draw_fills_each_source_by_weight_deterministically(sources_data):
    from configs import default

    equal = sources_config(sources_data, sources=(default.source("t1", "brain_phantom/small_t1"),
                                                  default.source("t2", "brain_phantom/small_t2")))
    weighted = sources_config(sources_data, sources=(default.source("t1", "brain_phantom/small_t1", weight=3.0),
                                                     default.source("t2", "brain_phantom/small_t2", weight=1.0)))
    p_equal, p_weighted = pipeline_of(equal), pipeline_of(weighted)
    assert p_equal.draw is None  # equal sizes, equal weights: the plain epoch
    from brainjax.data import pipeline  # the counts a build without its report falls back to

    assert pipeline.source_counts(p_weighted.builder) == p_weighted.builder.build_report()["splits"]["train"]["per_source"]
    first = epoch_sources(p_weighted, weighted, 0)
    share = float((first == 0).mean())
    assert 0.70 <= share <= 0.80, share  # t1 fills 3/4 of the epoch
    assert abs(float((epoch_sources(p_equal, equal, 0) == 0).mean()) - 0.5) < 0.06
    assert np.array_equal(first, epoch_sources(p_weighted, weighted, 0))
    index = lambda e: np.concatenate([b["index"].reshape(-1) for b in p_weighted.train_epoch("train", e, 0)])
    assert not np.array_equal(index(0), index(1))


def test_the_weighted_draw_gives_every_layout_the_same_batches(sources_data):
    """Process p of 2 (2 devices each) reads exactly its half of each global batch of the
    1-process, 4-device run: the same examples, in the same order, with their sources."""
    config = sources_config(sources_data, batch_size=32, input_shards=4)
    from brainjax.data.pipeline import InputPipeline

    def batches(count, index, devices):
        pipe = InputPipeline(config, num_local_devices=devices, process_index=index, process_count=count)
        assert pipe.draw is not None
        return [(b["index"].reshape(-1), b["source"].reshape(-1)) for b in pipe.train_epoch("train", 1, 0)]

    one, first, second = batches(1, 0, 4), batches(2, 0, 2), batches(2, 1, 2)
    assert len(one) == len(first) == len(second) == 45
    for (i, s), (i0, s0), (i1, s1) in zip(one, first, second):
        assert np.array_equal(i, np.concatenate([i0, i1])) and np.array_equal(s, np.concatenate([s0, s1]))


def test_holdout_source_is_never_trained_on_and_is_scored_whole(sources_data):
    config = sources_config(sources_data, holdout_source="t2")
    pipe = pipeline_of(config)
    k = pipe.source_names.index("t2")
    for epoch in range(2):
        assert not (epoch_sources(pipe, config, epoch) == k).any()
    for split in ("train", "validation", "test"):
        batches = list(pipe.eval_batches(split))
        assert not any(((b["source"] == k) & (b["mask"] > 0)).any() for b in batches), split
    holdout = [b for b in pipe.eval_batches("holdout")]
    kept = np.concatenate([b["source"][b["mask"] > 0] for b in holdout])
    assert len(kept) == 800 + 120 and (kept == k).all()  # every image of the site


def test_holdout_copies_removed_come_from_the_build_report_and_are_unknown_without_one():
    from types import SimpleNamespace

    from brainjax.evaluators import holdout

    def context(report):
        return SimpleNamespace(pipeline=SimpleNamespace(builder=SimpleNamespace(build_report=lambda: report)))

    report = {"removed_copies": {"figshare/holdout": 7, "figshare/test": 3, "sartaj/holdout": 2}}
    assert holdout.removed_copies(context(report), "figshare") == 7
    assert holdout.removed_copies(context({"removed_copies": {}}), "figshare") == 0  # none found
    assert holdout.removed_copies(context({}), "figshare") is None  # no build report: unknown, not 0


# --- runs -------------------------------------------------------------------------------

def test_two_source_run_reports_each_source_and_they_add_up(sources_data, tmp_path):
    workdir = str(tmp_path / "run")
    launch(f"--workdir={workdir}", f"--config.data_dir={sources_data}", *SMOKE)
    report = json.load(open(os.path.join(workdir, "report.json")))
    assert set(report["sources"]) == {"t1", "t2"}
    total = np.zeros_like(np.array(report["clean"]["confusion_matrix"]))
    for name, section in report["sources"].items():
        cm = np.array(section["test"]["confusion_matrix"])
        assert cm.sum() == section["test"]["num_examples"] == 120
        assert abs(np.trace(cm) / cm.sum() - section["test"]["accuracy"]) < 1e-9
        assert section["validation"]["num_examples"] == 80
        total += cm
    assert total.tolist() == report["clean"]["confusion_matrix"]  # the pooled test split is the sources' union


def test_loso_writes_its_table_and_a_rerun_reads_instead_of_retraining(sources_data, tmp_path):
    workdir = str(tmp_path / "loso")
    launch(f"--workdir={workdir}", "--mode=loso", f"--config.data_dir={sources_data}", *SMOKE)
    table = json.load(open(os.path.join(workdir, "loso.json")))
    assert [r["held_out"] for r in table["rows"]] == ["t1", "t2"]
    for r in table["rows"]:
        report = json.load(open(os.path.join(workdir, f"holdout-{r['held_out']}", "report.json")))
        assert report["holdout"]["source"] == r["held_out"] and r["num_examples"] == 920
        assert r["accuracy"] == report["holdout"]["clean"]["accuracy"]
        assert 0.0 <= r["ood_auroc"] <= 1.0
    stamps = {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(workdir, "holdout-*", "**"), recursive=True)
              if os.path.isfile(p)}
    again = launch(f"--workdir={workdir}", "--mode=loso", f"--config.data_dir={sources_data}", *SMOKE)
    assert again.stderr.count("read, not retrained") == 2
    assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps  # the sub-runs are untouched


@pytest.mark.parametrize("override, message", [
    ("--config.holdout_source=t3", "config.holdout_source='t3' is not a source"),
    ("--config.sources=({'name': 't1'},)", "config.sources[0] lacks"),
])
def test_a_bad_source_setting_is_one_line_before_any_work(override, message, tmp_path):
    workdir = str(tmp_path / "w")
    out = launch(f"--workdir={workdir}", f"--config.data_dir={tmp_path / 'tfds'}", *SMOKE, override, check=False)
    assert out.returncode == 1
    lines = [l for l in out.stderr.splitlines() if l.startswith("brainjax: error:")]
    assert len(lines) == 1 and message in lines[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not os.path.exists(workdir) and not os.path.exists(tmp_path / "tfds" / "multi_source")


@pytest.mark.parametrize("fields, message", [
    (dict(names=("t1", "t1")), "repeat"),
    (dict(weight=0.0), "weight=0.0 must be > 0"),
    (dict(class_map="glioma_tumor=glioma"), "names classes ['glioma_tumor']"),
    (dict(dataset="brain_phantom/nosuch"), "config.sources[t1]: unknown dataset 'brain_phantom/nosuch'"),
])
def test_bad_source_entries_are_one_line_naming_the_field(fields, message, sources_data):
    from brainjax.data import pipeline
    from brainjax.errors import UserError
    from configs import default

    names = fields.pop("names", ("t1", "t2"))
    dataset = fields.pop("dataset", None)
    sources = tuple(default.source(n, dataset or f"brain_phantom/small_{d}", **fields)
                    for n, d in zip(names, ("t1", "t2")))
    with pytest.raises(UserError, match=r"config\.sources") as err:
        pipeline.checked_builder(sources_config(sources_data, sources=sources))
    assert message in str(err.value) and "\n" not in str(err.value)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_of_two_devices_match_one_process_of_four_with_two_sources(tmp_path):
    """The weighted draw over two sources, on a real 2-process cluster: the same report."""
    from configs import default  # noqa: F401  (the config the processes load)

    common = [*SMOKE, "--config.batch_size=32", "--config.input_shards=4"]
    env = lambda n: {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
    data_dir = str(tmp_path / "tfds")
    one = str(tmp_path / "one")
    launch(f"--workdir={one}", f"--config.data_dir={data_dir}", *common,
           env=env(4))
    port = _free_port()
    two = str(tmp_path / "two")
    procs = [subprocess.Popen([sys.executable, "launch.py", *common, f"--workdir={two}", f"--config.data_dir={data_dir}",
                               f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
                              cwd=ROOT, env=env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    deadline = time.time() + 400
    for p in procs:
        _, err = p.communicate(timeout=max(deadline - time.time(), 1))
        assert p.returncode == 0, err[-3000:]
    a, b = (json.load(open(os.path.join(w, "report.json"))) for w in (one, two))
    assert a["clean"]["confusion_matrix"] == b["clean"]["confusion_matrix"]
    for name in ("t1", "t2"):
        assert a["sources"][name]["test"]["confusion_matrix"] == b["sources"][name]["test"]["confusion_matrix"]
    la, lb = (open(os.path.join(w, "metrics.jsonl")).read().splitlines() for w in (one, two))
    loss = lambda lines: [json.loads(l)["loss"] for l in lines if '"train_window"' in l]
    assert np.allclose(loss(la), loss(lb), rtol=1e-5, atol=1e-6) and loss(la)
