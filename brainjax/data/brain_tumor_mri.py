"""tensorflow-datasets builder `brain_tumor_mri`: the Kaggle brain-tumour MRI datasets.

The data cannot be downloaded automatically (Kaggle login), so the builder reads a local
copy through tfds `manual_dir`: the extracted folder or the downloaded zip.

Configs (same label names in every config):
  sartaj      "Brain Tumor Classification (MRI)", Sartaj Bhuvaji et al.: Training/ and
              Testing/ with glioma_tumor, meningioma_tumor, no_tumor, pituitary_tumor.
  nickparvar  "Brain Tumor MRI Dataset", Masoud Nickparvar: Training/ and Testing/ with
              glioma, meningioma, notumor, pituitary.

Splits:
  train        all of Training
  test         the official Testing
  test_dedup   Testing minus images that have an exact or near duplicate in Training,
               with duplicate groups inside Testing collapsed to one image
  train_sub /  a stratified, seeded 80/20 split of Training (the seed project's protocol;
  validation   also the validation split). Duplicate groups stay on one side, so the
               validation split does not leak either.

Features: image (uint8 grayscale H x W x 1, longest side capped at `max_size`, 256 px), label,
filename (path relative to the dataset root, as in the original folder).

Unreadable files are skipped and listed in the build report; duplicates are listed with
the reason each test image was removed. Reports: <data_dir>/brain_tumor_mri/<config>/
build_report.json and dedup_report.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import zipfile

import numpy as np
import tensorflow_datasets as tfds

from brainjax.data import images
from brainjax.data.phantom import CLASS_NAMES
from brainjax.errors import UserError

log = logging.getLogger("brainjax")
SPLIT_DIRS = ("Training", "Testing")

MANUAL_DOWNLOAD_INSTRUCTIONS = """
Download the dataset from Kaggle (a free account is needed) and point brainjax at it:

  sartaj:     https://www.kaggle.com/datasets/sartajbhuvaji/brain-tumor-classification-mri
  nickparvar: https://www.kaggle.com/datasets/masoudnickparvar/brain-tumor-mri-dataset

Either the downloaded zip or the extracted folder (the one holding Training/ and Testing/)
works:  python launch.py --config=configs/sartaj_tiny.py --config.manual_dir=/path/to/it
(in Python: tfds.builder("brain_tumor_mri/sartaj").download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir="/path/to/it"))).
"""


@dataclasses.dataclass
class BrainTumorMriConfig(tfds.core.BuilderConfig):
    class_dirs: tuple[str, ...] = ()  # folder name per label, in CLASS_NAMES order
    max_size: int = 256  # longest side stored; the models train at <= 224 px
    val_fraction: float = 0.2
    split_seed: int = 0
    near_threshold: float = images.NEAR_THRESHOLD


@dataclasses.dataclass
class Record:
    split_dir: str  # Training | Testing
    label: int
    relpath: str  # relative to the dataset root
    path: str


def find_root(manual_dir: str, class_dirs: tuple[str, ...], extract=None) -> str:
    """The folder holding Training/ and Testing/ inside `manual_dir` (or a zip in it)."""
    manual_dir = str(manual_dir) if manual_dir else manual_dir
    if not manual_dir or not os.path.exists(manual_dir):
        raise UserError(f"manual_dir {manual_dir!r} does not exist.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")
    candidates = [manual_dir]
    if os.path.isfile(manual_dir) and zipfile.is_zipfile(manual_dir):
        candidates = [str(extract(manual_dir))]
    elif os.path.isdir(manual_dir) and not any(os.path.isdir(os.path.join(manual_dir, d)) for d in SPLIT_DIRS):
        zips = sorted(f for f in os.listdir(manual_dir) if f.lower().endswith(".zip"))
        candidates += [str(extract(os.path.join(manual_dir, z))) for z in zips]
    for base in candidates:
        for dirpath, dirnames, _ in os.walk(base):
            if all(d in dirnames for d in SPLIT_DIRS):
                return dirpath
            if dirpath.count(os.sep) - base.count(os.sep) >= 3:
                dirnames[:] = []
    found = sorted(os.listdir(candidates[-1]))[:10] if os.path.isdir(candidates[-1]) else []
    raise UserError(f"{manual_dir}: expected a folder with {SPLIT_DIRS[0]}/ and {SPLIT_DIRS[1]}/ (each with "
                    f"class folders {list(class_dirs)}), found {found}.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")


def scan(root: str, class_dirs: tuple[str, ...]) -> list[Record]:
    """All image files under root/{Training,Testing}/{class}/, sorted; clear error on a wrong layout."""
    records = []
    for split_dir in SPLIT_DIRS:
        present = sorted(d for d in os.listdir(os.path.join(root, split_dir))
                         if os.path.isdir(os.path.join(root, split_dir, d)))
        missing = [d for d in class_dirs if d not in present]
        if missing:
            raise UserError(f"{os.path.join(root, split_dir)}: expected class folders {list(class_dirs)}, "
                            f"found {present} (missing {missing}); is this the right dataset config?")
        for label, cdir in enumerate(class_dirs):
            folder = os.path.join(root, split_dir, cdir)
            for dirpath, _, files in os.walk(folder):
                for f in sorted(files):
                    if f.startswith("."):
                        continue
                    path = os.path.join(dirpath, f)
                    records.append(Record(split_dir, label, os.path.relpath(path, root), path))
    counts = {s: sum(r.split_dir == s for r in records) for s in SPLIT_DIRS}
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
        raise UserError(f"{root}: no files in {empty}; expected images under <split>/<class>/")
    return sorted(records, key=lambda r: r.relpath)


def stratified_group_split(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the held-out share: per class, whole groups in random order until the
    class's quota is met; a group goes where its first member's class puts it."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), bool)
    group_ids = np.unique(groups)
    first_label = {g: labels[np.nonzero(groups == g)[0][0]] for g in group_ids}
    for c in np.unique(labels):
        count = int((labels == c).sum())
        quota = max(1, round(fraction * count)) if count >= 2 else 0
        taken = 0
        for g in rng.permutation([g for g in group_ids if first_label[g] == c]):
            if taken >= quota:
                break
            members = groups == g
            held |= members
            taken += int(members.sum())
    return held


class BrainTumorMri(tfds.core.GeneratorBasedBuilder):
    """Kaggle brain-tumour MRI datasets (manual download), with leakage-aware splits."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        BrainTumorMriConfig(name="sartaj", description="Sartaj Bhuvaji et al., 3264 images.",
                            class_dirs=("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")),
        BrainTumorMriConfig(name="nickparvar", description="Masoud Nickparvar, 7023 images.",
                            class_dirs=("glioma", "meningioma", "notumor", "pituitary")),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
                "filename": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
            homepage="https://www.kaggle.com/datasets/sartajbhuvaji/brain-tumor-classification-mri",
        )

    def report_dir(self) -> str:
        return os.path.join(self._data_dir_root, self.name, self.builder_config.name)

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        root = find_root(dl_manager.manual_dir, cfg.class_dirs, extract=dl_manager.extract)
        records = scan(root, cfg.class_dirs)
        splits, report, encoded = self._plan(records, root)
        os.makedirs(self.report_dir(), exist_ok=True)
        with open(os.path.join(self.report_dir(), "build_report.json"), "w") as f:
            json.dump(report, f, indent=2)
        with open(os.path.join(self.report_dir(), "dedup_report.md"), "w") as f:
            f.write(dedup_markdown(report))
        log.info("brain_tumor_mri/%s: %s; %d unreadable files skipped; report in %s", cfg.name,
                 {k: len(v) for k, v in splits.items()}, len(report["unreadable"]), self.report_dir())
        empty = [name for name, recs in splits.items() if not recs]
        if empty:
            log.warning("brain_tumor_mri/%s: splits %s would be empty and are not created", cfg.name, empty)
        return {name: self._generate_examples(recs, encoded) for name, recs in splits.items() if recs}

    def _plan(self, records: list[Record], root: str) -> tuple[dict[str, list[Record]], dict, dict[str, bytes]]:
        """Decodes every file once (hash + thumbnail, and the PNG the splits store: a
        training image sits in two splits, train and train_sub/validation), finds
        duplicates, builds the splits. Returns (splits, report, PNG bytes by relpath)."""
        cfg = self.builder_config
        index, readable, unreadable, encoded = images.DuplicateIndex(), [], [], {}
        for rec in records:
            with open(rec.path, "rb") as f:
                data = f.read()
            try:
                gray = images.decode_grayscale(data, cfg.max_size)
            except images.UnreadableImage as err:
                unreadable.append({"file": rec.relpath, "error": str(err)})
                continue
            index.add(rec.relpath, data, gray)
            encoded[rec.relpath] = images.encode_png(gray)
            readable.append(rec)
        exact, near = images.duplicate_groups(index, cfg.near_threshold)
        group = np.arange(len(readable))
        for g in near:  # near groups include the exact ones
            group[g] = min(g)
        is_test = np.array([r.split_dir == "Testing" for r in readable])
        labels = np.array([r.label for r in readable])
        sim = index.similarity() if len(readable) else np.zeros((0, 0))
        removed, kept_test = [], []
        seen_groups: dict[int, str] = {}
        train_groups = {int(group[i]) for i in np.nonzero(~is_test)[0]}
        for i in np.nonzero(is_test)[0]:
            rec = readable[i]
            members = [j for j in np.nonzero(group == group[i])[0] if j != i]
            train_match = [j for j in members if not is_test[j]]
            if int(group[i]) in train_groups:
                j = max(train_match, key=lambda j: sim[i, j])
                reason = "exact" if index.hashes[i] == index.hashes[j] else "near"
                removed.append({"file": rec.relpath, "label": CLASS_NAMES[rec.label], "reason": f"{reason} duplicate in Training",
                                "match": readable[j].relpath, "match_label": CLASS_NAMES[readable[j].label],
                                "similarity": round(float(sim[i, j]), 4)})
            elif int(group[i]) in seen_groups:
                removed.append({"file": rec.relpath, "label": CLASS_NAMES[rec.label],
                                "reason": "duplicate within Testing", "match": seen_groups[int(group[i])]})
            else:
                seen_groups[int(group[i])] = rec.relpath
                kept_test.append(rec)
        train_idx = np.nonzero(~is_test)[0]
        held = stratified_group_split(labels[train_idx], group[train_idx], cfg.val_fraction, cfg.split_seed)
        cross_label = [{"a": readable[g[0]].relpath, "members": [readable[j].relpath for j in g],
                        "labels": sorted({CLASS_NAMES[labels[j]] for j in g})}
                       for g in near if len({labels[j] for j in g}) > 1]
        splits = {
            "train": [readable[i] for i in train_idx],
            "test": [readable[i] for i in np.nonzero(is_test)[0]],
            "test_dedup": kept_test,
            "train_sub": [readable[i] for i, h in zip(train_idx, held) if not h],
            "validation": [readable[i] for i, h in zip(train_idx, held) if h],
        }
        per_class = lambda recs: {CLASS_NAMES[c]: sum(r.label == c for r in recs) for c in range(len(CLASS_NAMES))}
        report = {
            "config": cfg.name, "root": root, "files_found": len(records),
            "near_threshold": cfg.near_threshold, "thumbnail": images.THUMB,
            "splits": {k: {"count": len(v), "per_class": per_class(v)} for k, v in splits.items()},
            "unreadable": unreadable,
            "exact_duplicate_groups": len(exact),
            "exact_redundant_copies": int(sum(len(g) - 1 for g in exact)),
            "near_duplicate_groups": len(near),
            "test_removed": removed,
            "test_with_duplicate_in_train": sum(r["reason"].endswith("in Training") for r in removed),
            "cross_label_groups": cross_label,
        }
        return splits, report, encoded

    def _generate_examples(self, records: list[Record], encoded: dict[str, bytes]):
        for rec in records:
            yield rec.relpath, {"image": encoded[rec.relpath], "label": rec.label, "filename": rec.relpath}


def dedup_markdown(report: dict) -> str:
    lines = [f"# brain_tumor_mri/{report['config']}: build and deduplication report", "",
             f"Source: `{report['root']}`, {report['files_found']} files.", "",
             "| split | images | " + " | ".join(CLASS_NAMES) + " |", "|---|---|" + "---|" * len(CLASS_NAMES)]
    for name, s in report["splits"].items():
        lines.append(f"| {name} | {s['count']} | " + " | ".join(str(s["per_class"][c]) for c in CLASS_NAMES) + " |")
    lines += ["", f"- unreadable files skipped: {len(report['unreadable'])}"]
    lines += [f"  - `{u['file']}`: {u['error']}" for u in report["unreadable"]]
    lines += [f"- byte-identical copies: {report['exact_redundant_copies']} redundant files in "
              f"{report['exact_duplicate_groups']} groups",
              f"- near-duplicate groups (thumbnail cosine >= {report['near_threshold']}, mirror-invariant): "
              f"{report['near_duplicate_groups']}",
              f"- Testing images with a duplicate in Training: {report['test_with_duplicate_in_train']} "
              "(removed from `test_dedup`)",
              f"- duplicate groups whose members carry different labels: {len(report['cross_label_groups'])}"]
    lines += [f"  - {g['members']} labels {g['labels']}" for g in report["cross_label_groups"]]
    lines += ["", "## Removed from test_dedup", "", "| file | label | reason | match | match label | similarity |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['file']} | {r['label']} | {r['reason']} | {r.get('match', '')} | {r.get('match_label', '')} | "
              f"{r.get('similarity', '')} |" for r in report["test_removed"]]
    return "\n".join(lines) + "\n"
