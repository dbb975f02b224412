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
import os
import zipfile

import tensorflow_datasets as tfds

from brainjax.data import folder_splits, images
from brainjax.data.folder_splits import Record
from brainjax.errors import UserError

SPLIT_DIRS = (folder_splits.TRAIN, folder_splits.TEST)

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
    class_dirs: tuple[str, ...] = ()  # folder name per label, in class_names order
    # The label names, the same in both configs (the phantom's too), so a model trained on
    # one Kaggle set is evaluated on the other.
    class_names: tuple[str, ...] = ("glioma", "meningioma", "no_tumor", "pituitary")
    max_size: int = 256  # longest side stored; the models train at <= 224 px
    val_fraction: float = 0.2
    split_seed: int = 0
    near_threshold: float = images.NEAR_THRESHOLD


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
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # e.g. an unfinished download
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


class BrainTumorMri(tfds.core.GeneratorBasedBuilder):
    """Kaggle brain-tumour MRI datasets (manual download), with leakage-aware splits."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    SPLIT_NAMES = folder_splits.SPLIT_NAMES  # what preflight checks split fields against
    BUILDER_CONFIGS = [
        BrainTumorMriConfig(name="sartaj", description="Sartaj Bhuvaji et al., 3264 images.",
                            class_dirs=("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")),
        BrainTumorMriConfig(name="nickparvar", description="Masoud Nickparvar, 7023 images.",
                            class_dirs=("glioma", "meningioma", "notumor", "pituitary")),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=folder_splits.image_features(self.builder_config.class_names),
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
        return folder_splits.finish_build(f"brain_tumor_mri/{cfg.name}", self.report_dir(), splits, report,
                                          lambda recs: self._generate_examples(recs, encoded))

    def _plan(self, records: list[Record], root: str) -> tuple[dict[str, list[Record]], dict, dict[str, bytes]]:
        cfg = self.builder_config
        plan = folder_splits.SplitPlan(max_size=cfg.max_size, near_threshold=cfg.near_threshold,
                                       val_fraction=cfg.val_fraction, split_seed=cfg.split_seed)
        return folder_splits.plan_splits(records, root, cfg.class_names, plan, self.name, cfg.name)

    def _generate_examples(self, records: list[Record], encoded: dict[str, bytes]):
        yield from folder_splits.generate_examples(records, encoded)
