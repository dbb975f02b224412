"""tensorflow-datasets builder `image_folder`: any folder of class folders, any number of
classes (>= 2), like Keras' `image_dataset_from_directory`.

    --config.dataset=image_folder --config.manual_dir=DIR [--config.class_map=...]

Layouts:
  DIR/<class>/...                      the test set is a seeded, stratified, duplicate-aware
                                       share (config.test_fraction, default 0.2)
  DIR/<class>/... + DIR/test/<class>/  the test folder is the test set
  DIR/train/<class>/ + DIR/test/<class>/  likewise (also Training/ and Testing/)

Inside a class folder: image files, DICOM files, folders of DICOM files (a series) and
NIfTI volumes (`brainjax.data.decode`; a volume or series becomes one example per
slice). All slices of one volume, series or DICOM Patient ID share a split; JPEG / PNG
sets without such metadata can give DIR/groups.csv (rows: relative path, group).

Class names are the sub-folder names in sorted order (Keras' order). `class_map` renames or
merges folders: "no_tumor=normal,glioma_tumor=tumor,meningioma_tumor=tumor" or a dict;
folders it does not name keep their name.

Splits, decoding, the unreadable-file report and the near-duplicate `test_dedup` split are
those of the Kaggle builder (`folder_splits`). Each folder (with its class map and split
settings) is its own tfds config, named after the folder plus a hash of those settings, so
two folders never share a prepared dataset; a changed class map, or any file added,
removed, edited or moved (the key includes a manifest of every file's relative path, size
and modification time), gets a new one.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import re
from typing import Any, Mapping

import tensorflow_datasets as tfds

from brainjax.data import decode, folder_splits, images
from brainjax.errors import UserError

TEST_DIRS = ("test", "Test", "Testing", "testing")
TRAIN_DIRS = ("train", "Train", "Training", "training")


@dataclasses.dataclass
class ImageFolderConfig(tfds.core.BuilderConfig):
    root: str = ""  # the folder holding the training class folders
    test_root: str = ""  # the test folder, or "" for a seeded test share
    class_names: tuple[str, ...] = ()
    folder_labels: tuple[tuple[str, int], ...] = ()  # (class folder, label)
    test_fraction: float = 0.2
    val_fraction: float = 0.2
    split_seed: int = 0
    max_size: int = decode.MAX_SIZE
    near_threshold: float = images.NEAR_THRESHOLD
    slice_axis: str = "axial"  # how NIfTI volumes are cut (decode.read)
    min_foreground: float = decode.MIN_FOREGROUND


def parse_class_map(class_map: str | Mapping[str, str] | None) -> dict[str, str]:
    """'a=x,b=x' or {'a': 'x'} -> {'a': 'x', 'b': 'x'}; a clear error on a malformed entry."""
    if not class_map:
        return {}
    if isinstance(class_map, Mapping) or hasattr(class_map, "items"):
        return {str(k): str(v) for k, v in dict(class_map).items()}
    out = {}
    for item in str(class_map).split(","):
        if not item.strip():
            continue
        folder, sep, name = item.partition("=")
        if not sep or not folder.strip() or not name.strip():
            raise UserError(f"config.class_map: {item!r} is not 'folder=name' (e.g. "
                            "--config.class_map='no_tumor=normal,glioma_tumor=tumor')")
        out[folder.strip()] = name.strip()
    return out


def subfolders(path: str) -> list[str]:
    return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)) and not d.startswith("."))


def find_layout(manual_dir: str | None) -> tuple[str, str]:
    """(training root, test root or '') of a class-folder tree."""
    if not manual_dir:
        raise UserError("dataset image_folder needs config.manual_dir: a folder with one sub-folder per class "
                        "(e.g. --config.manual_dir=/data/scans with /data/scans/glioma/*.png, ...)")
    manual_dir = os.path.abspath(os.path.expanduser(str(manual_dir)))
    if not os.path.isdir(manual_dir):
        raise UserError(f"config.manual_dir {manual_dir}: no such folder (image_folder wants a folder of "
                        "class folders)")
    present = subfolders(manual_dir)
    test = next((d for d in TEST_DIRS if d in present), None)
    train = next((d for d in TRAIN_DIRS if d in present), None)
    test_root = os.path.join(manual_dir, test) if test else ""
    root = os.path.join(manual_dir, train) if train else manual_dir
    return root, test_root


def folder_config(manual_dir: str | None, class_map: Any = None, *, test_fraction: float = 0.2,
                  val_fraction: float = 0.2, split_seed: int = 0, slice_axis: str = "axial",
                  min_foreground: float = decode.MIN_FOREGROUND) -> ImageFolderConfig:
    """The tfds config for one folder: class names from its sub-folders (after `class_map`)."""
    root, test_root = find_layout(manual_dir)
    mapping = parse_class_map(class_map)
    folders = [d for d in subfolders(root) if not (root == os.path.abspath(os.path.expanduser(str(manual_dir)))
                                                   and d in TEST_DIRS + TRAIN_DIRS)]
    if not folders:
        raise UserError(f"{root}: no class folders; image_folder wants one sub-folder per class "
                        f"(found files only: {sorted(os.listdir(root))[:5]})")
    unknown = sorted(set(mapping) - set(folders))
    if unknown:
        raise UserError(f"config.class_map names folders {unknown} that are not in {root} (found {folders})")
    names = sorted({mapping.get(d, d) for d in folders})
    if len(names) < 2:
        raise UserError(f"{root}: only one class ({names[0]!r}, from {folders}); a classifier needs at least "
                        "two class folders")
    folder_labels = tuple((d, names.index(mapping.get(d, d))) for d in folders)
    if test_root:
        extra = sorted(set(subfolders(test_root)) - set(folders))
        if extra:
            raise UserError(f"{test_root}: class folders {extra} are not among the training classes {folders}")
    if slice_axis not in decode.SLICE_AXES:
        raise UserError(f"config.slice_axis={slice_axis!r} must be one of {sorted(decode.SLICE_AXES)}")
    groups_file = os.path.join(os.path.abspath(os.path.expanduser(str(manual_dir))), GROUPS_FILE)
    key = repr((root, test_root, folder_labels, names, test_fraction, val_fraction, split_seed, slice_axis,
                min_foreground, manifest(root, test_root, [d for d, _ in folder_labels]),
                open(groups_file, "rb").read() if os.path.isfile(groups_file) else b""))
    slug = re.sub(r"[^A-Za-z0-9_]+", "_", os.path.basename(os.path.dirname(root) if root.endswith(TRAIN_DIRS)
                                                            else root)).strip("_")[:40] or "folder"
    name = f"{slug}_{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    return ImageFolderConfig(name=name, description=f"class folders of {root}", root=root, test_root=test_root,
                             class_names=tuple(names), folder_labels=folder_labels, test_fraction=test_fraction,
                             val_fraction=val_fraction, split_seed=split_seed, slice_axis=slice_axis,
                             min_foreground=float(min_foreground))


def walk_files(folder: str):
    """Every non-hidden file below `folder`, in sorted order (what a build reads)."""
    for dirpath, dirnames, names in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                yield os.path.join(dirpath, name)


def manifest(root: str, test_root: str, folders: list[str]) -> str:
    """sha1 of (relative path, size, mtime) of every file a build would read: adding,
    removing, editing or moving a scan between class folders gives a new build key."""
    digest = hashlib.sha1()
    for base in (root, test_root):
        for folder in folders if base else ():
            for path in walk_files(os.path.join(base, folder)):
                st = os.stat(path)
                digest.update(f"{os.path.relpath(path, base)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


GROUPS_FILE = "groups.csv"


def read_groups(manual_dir: str) -> dict[str, str]:
    """{absolute path: group} from `<manual_dir>/groups.csv` (rows: relative path, group;
    a header row 'path,group' is allowed): for JPEG / PNG sets whose files carry no
    patient identity. One line naming the row when it is malformed."""
    path = os.path.join(manual_dir, GROUPS_FILE)
    if not os.path.isfile(path):
        return {}
    out = {}
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            if not row or (n == 1 and [c.strip().lower() for c in row[:2]] == ["path", "group"]):
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise UserError(f"{path}, row {n}: expected 'relative path,group', got {row!r}")
            out[os.path.abspath(os.path.join(manual_dir, row[0].strip()))] = f"group:{row[1].strip()}"
    return out


def scan(cfg: ImageFolderConfig, manual_dir: str | None = None) -> list[folder_splits.Record]:
    """Every input under the class folders (image files, DICOM files and series folders,
    NIfTI volumes; other files, to be reported unreadable), sorted by path; each with its
    groups.csv group where it has one."""
    common = os.path.commonpath([cfg.root, cfg.test_root]) if cfg.test_root else cfg.root
    groups = read_groups(manual_dir) if manual_dir else {}
    records = []
    for split_dir, base in ((folder_splits.TRAIN, cfg.root), (folder_splits.TEST, cfg.test_root)):
        if not base:
            continue
        for folder, label in cfg.folder_labels:
            for path in decode.expand_inputs([os.path.join(base, folder)], keep_unknown=True):
                records.append(folder_splits.Record(split_dir, label, os.path.relpath(path, common), path,
                                                    group=groups.get(os.path.abspath(path), "")))
    if not records:
        raise UserError(f"{cfg.root}: the class folders {[d for d, _ in cfg.folder_labels]} hold no files")
    return sorted(records, key=lambda r: (r.split_dir, r.relpath))


class ImageFolder(tfds.core.GeneratorBasedBuilder):
    """Any folder of class folders, with leakage-aware splits (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    SPLIT_NAMES = folder_splits.SPLIT_NAMES  # what preflight checks split fields against
    # No fixed configs: `folder_config` makes one per folder; pass it as `config=`.

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=folder_splits.image_features(self.builder_config.class_names),
            supervised_keys=("image", "label"),
        )

    def report_dir(self) -> str:
        return os.path.join(self._data_dir_root, self.name, self.builder_config.name)

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        plan = folder_splits.SplitPlan(max_size=cfg.max_size, near_threshold=cfg.near_threshold,
                                       val_fraction=cfg.val_fraction, split_seed=cfg.split_seed,
                                       test_fraction=0.0 if cfg.test_root else cfg.test_fraction,
                                       read_options={"slice_axis": cfg.slice_axis,
                                                     "min_foreground": cfg.min_foreground})
        manual_dir = os.path.dirname(cfg.root) if os.path.basename(cfg.root) in TRAIN_DIRS else cfg.root
        splits, report, encoded = folder_splits.plan_splits(scan(cfg, manual_dir), cfg.root, cfg.class_names,
                                                            plan, self.name, cfg.name)
        report["test_root"] = cfg.test_root or None
        report["folder_labels"] = {d: cfg.class_names[k] for d, k in cfg.folder_labels}
        return folder_splits.finish_build(f"image_folder/{cfg.name}", self.report_dir(), splits, report,
                                          lambda recs: self._generate_examples(recs, encoded))

    def _generate_examples(self, records, encoded):
        yield from folder_splits.generate_examples(records, encoded)
