"""Leakage-aware splits of a folder of labelled image files, shared by the tfds builders
that read a user's folder (`brain_tumor_mri`, `image_folder`).

One pass decodes every file (`decode.read`: images, DICOM, NIfTI), records the unreadable ones,
finds exact and near duplicates, and builds the splits:

  train        every training file
  test         the test files (a test folder, or a seeded, group-aware share of the files)
  test_dedup   test minus images with an exact or near duplicate in train, and with
               duplicate groups inside test collapsed to one image
  train_sub /  a stratified, seeded split of train; duplicate groups stay on one side,
  validation   so validation does not leak either

The build report (JSON and markdown) lists every skipped file and every removed duplicate
with the reason, so a user can check what the numbers were computed on.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Sequence

import numpy as np

from brainjax import files
from brainjax.data import decode, images
from brainjax.errors import UserError

log = logging.getLogger("brainjax")
TRAIN, TEST = "Training", "Testing"
# The splits a folder build makes (one that would be empty is left out of the build).
SPLIT_NAMES = ("train", "test", "test_dedup", "train_sub", "validation")


@dataclasses.dataclass
class Record:
    split_dir: str  # TRAIN | TEST
    label: int
    relpath: str  # relative to the dataset root; "<file>#<slice>" for a slice of a volume or series
    path: str
    group: str = ""  # split group (groups.csv, else the decoder's: patient, series, volume, file)


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


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    max_size: int = 256
    near_threshold: float = images.NEAR_THRESHOLD
    val_fraction: float = 0.2
    split_seed: int = 0
    # Share of the files held out as `test` when no record is in TEST (no test folder).
    test_fraction: float = 0.0
    read_options: dict | None = None  # decode.read options (slice_axis, min_foreground)


def decode_all(records: Sequence[Record], max_size: int, options: dict | None = None):
    """(readable slice records, unreadable report rows, DuplicateIndex, PNG bytes by
    relpath, skipped empty slices). Each input (an image, a DICOM file or series folder,
    a NIfTI volume) becomes one record per slice, read by `brainjax.data.decode`; exact
    duplicates are by file bytes for a 2-D file, by pixels for a slice."""
    index, readable, unreadable, encoded, skipped = images.DuplicateIndex(), [], [], {}, 0
    for rec in records:
        try:
            decoded = decode.read(rec.path, **(options or {}))
        except decode.UnreadableImage as err:
            unreadable.append({"file": rec.relpath, "error": str(err).split(": ", 1)[-1]})
            continue
        skipped += decoded.skipped
        for s in decoded.slices:
            relpath = slice_relpath(rec, s)
            gray = decode.cap_size(s.pixels, max_size)
            single_file = not s.of_volume and not s.meta.get("file")
            index.add(relpath, _file_bytes(rec.path) if single_file else s.pixels.tobytes(), gray)
            encoded[relpath] = images.encode_png(gray)
            readable.append(dataclasses.replace(rec, relpath=relpath, group=rec.group or s.group))
    return readable, unreadable, index, encoded, skipped


def slice_relpath(rec: Record, s: decode.Slice) -> str:
    """A slice's name in the dataset: its file's relative path (a series' own file), with
    '#<index>' for one of several slices of that file (a volume, a multi-frame file)."""
    relpath = rec.relpath
    if s.meta.get("file"):  # a DICOM series: each slice has its file
        relpath = os.path.normpath(os.path.join(rec.relpath, os.path.relpath(s.meta["file"], rec.path)))
        return f"{relpath}#{s.meta['frame']:04d}" if s.meta.get("frames", 1) > 1 else relpath
    return f"{relpath}#{s.index:04d}" if s.of_volume else relpath


def _file_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def split_groups(readable: Sequence[Record], near: Sequence[Sequence[int]]) -> np.ndarray:
    """One group id per slice: slices of one patient, series, volume or groups.csv group,
    and near-duplicate slices, are joined (union-find), so a split never separates them."""
    parent = list(range(len(readable)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, rec in enumerate(readable):
        if rec.group:
            parent[find(i)] = find(first.setdefault(rec.group, i))
    for g in near:  # near groups include the exact ones
        for j in g[1:]:
            parent[find(j)] = find(g[0])
    roots = [find(i) for i in range(len(readable))]
    return np.array(roots)


def dedup_test(readable: Sequence[Record], index: images.DuplicateIndex, group: np.ndarray, is_test: np.ndarray,
               class_names: Sequence[str], near_threshold: float) -> tuple[list[dict], list[Record]]:
    """(removed rows, kept test records) of `test_dedup`: a test image whose group has a
    training member is removed (naming its closest match and why), and a group inside
    test is kept once."""
    sim = index.similarity()
    removed, kept_test = [], []
    seen_groups: dict[int, str] = {}
    train_groups = {int(group[i]) for i in np.nonzero(~is_test)[0]}
    for i in np.nonzero(is_test)[0]:
        rec = readable[i]
        members = [j for j in np.nonzero(group == group[i])[0] if j != i]
        train_match = [j for j in members if not is_test[j]]
        if int(group[i]) in train_groups:
            j = max(train_match, key=lambda j: sim[i, j])
            reason = ("exact duplicate" if index.hashes[i] == index.hashes[j] else "near duplicate"
                      if sim[i, j] >= near_threshold else f"same {rec.group.replace(':', ' ', 1)}")
            removed.append({"file": rec.relpath, "label": class_names[rec.label],
                            "reason": f"{reason} in Training", "match": readable[j].relpath,
                            "match_label": class_names[readable[j].label], "similarity": round(float(sim[i, j]), 4)})
        elif int(group[i]) in seen_groups:
            removed.append({"file": rec.relpath, "label": class_names[rec.label],
                            "reason": "duplicate within Testing", "match": seen_groups[int(group[i])]})
        else:
            seen_groups[int(group[i])] = rec.relpath
            kept_test.append(rec)
    return removed, kept_test


def plan_splits(records: Sequence[Record], root: str, class_names: Sequence[str], plan: SplitPlan,
                dataset: str, config_name: str) -> tuple[dict[str, list[Record]], dict, dict[str, bytes]]:
    """Decodes every file once (hash + thumbnail, and the PNG the splits store: a training
    image sits in two splits, train and train_sub/validation), finds duplicates, builds the
    splits. Returns (splits, report, PNG bytes by relpath)."""
    readable, unreadable, index, encoded, skipped = decode_all(records, plan.max_size, plan.read_options)
    if not readable:
        raise UserError(f"{root}: none of the {len(records)} files is a readable image "
                        f"(first: {unreadable[0]['file'] if unreadable else 'none'}: "
                        f"{unreadable[0]['error'] if unreadable else ''}); expected PNG/JPEG/... slices")
    exact, near = images.duplicate_groups(index, plan.near_threshold)
    group = split_groups(readable, near)
    labels = np.array([r.label for r in readable])
    is_test = np.array([r.split_dir == TEST for r in readable])
    if not is_test.any() and plan.test_fraction > 0:
        # No test folder: a seeded, group-aware share (a seed apart from validation's).
        is_test = stratified_group_split(labels, group, plan.test_fraction, plan.split_seed + 1)
    removed, kept_test = dedup_test(readable, index, group, is_test, class_names, plan.near_threshold)
    train_idx = np.nonzero(~is_test)[0]
    held = stratified_group_split(labels[train_idx], group[train_idx], plan.val_fraction, plan.split_seed)
    cross_label = [{"a": readable[g[0]].relpath, "members": [readable[j].relpath for j in g],
                    "labels": sorted({class_names[labels[j]] for j in g})}
                   for g in near if len({labels[j] for j in g}) > 1]
    splits = {
        "train": [readable[i] for i in train_idx],
        "test": [readable[i] for i in np.nonzero(is_test)[0]],
        "test_dedup": kept_test,
        "train_sub": [readable[i] for i, h in zip(train_idx, held) if not h],
        "validation": [readable[i] for i, h in zip(train_idx, held) if h],
    }
    group_of = {r.relpath: int(g) for r, g in zip(readable, group)}
    per_class = lambda recs: {c: sum(r.label == k for r in recs) for k, c in enumerate(class_names)}
    report = {
        "dataset": dataset, "config": config_name, "root": root, "files_found": len(records), "class_names": list(class_names),
        "near_threshold": plan.near_threshold, "thumbnail": images.THUMB,
        "splits": {k: {"count": len(v), "groups": len({group_of[r.relpath] for r in v}), "per_class": per_class(v)}
                   for k, v in splits.items()},
        "empty_slices_skipped": int(skipped),
        "unreadable": unreadable,
        "exact_duplicate_groups": len(exact),
        "exact_redundant_copies": int(sum(len(g) - 1 for g in exact)),
        "near_duplicate_groups": len(near),
        "test_removed": removed,
        "test_with_duplicate_in_train": sum(r["reason"].endswith("in Training") for r in removed),
        "cross_label_groups": cross_label,
    }
    return splits, report, encoded


def write_reports(report_dir: str, documents: dict[str, dict | str]) -> None:
    """{file name: JSON dict or markdown text} into `report_dir`, a builder's own folder
    in the tfds data_dir (brainjax owns it: a rebuild replaces the reports)."""
    files.make_dirs(report_dir)
    files.own(report_dir)
    for name, content in documents.items():
        path = os.path.join(report_dir, name)
        if isinstance(content, dict):
            files.write_json(path, content)
        else:
            files.write_text(path, content)


def dedup_markdown(report: dict) -> str:
    names = report["class_names"]
    lines = [f"# {report['dataset']}/{report['config']}: build and deduplication report", "",
             f"Source: `{report['root']}`, {report['files_found']} files.", "",
             "| split | images | groups | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for name, s in report["splits"].items():
        lines.append(f"| {name} | {s['count']} | {s.get('groups', '')} | "
                     + " | ".join(str(s["per_class"][c]) for c in names) + " |")
    lines += ["", "Groups: slices of one patient (DICOM Patient ID), series, volume or groups.csv group, and "
              "near-duplicate slices, always share a split."]
    lines += ["", f"- unreadable files skipped: {len(report['unreadable'])}"]
    lines += [f"  - `{u['file']}`: {u['error']}" for u in report["unreadable"]]
    lines += [f"- byte-identical copies: {report['exact_redundant_copies']} redundant files in "
              f"{report['exact_duplicate_groups']} groups",
              f"- near-duplicate groups (thumbnail cosine >= {report['near_threshold']}, mirror-invariant): "
              f"{report['near_duplicate_groups']}",
              f"- test images with a duplicate in the training files: {report['test_with_duplicate_in_train']} "
              "(removed from `test_dedup`)",
              f"- duplicate groups whose members carry different labels: {len(report['cross_label_groups'])}"]
    lines += [f"  - {g['members']} labels {g['labels']}" for g in report["cross_label_groups"]]
    lines += ["", "## Removed from test_dedup", "", "| file | label | reason | match | match label | similarity |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['file']} | {r['label']} | {r['reason']} | {r.get('match', '')} | {r.get('match_label', '')} | "
              f"{r.get('similarity', '')} |" for r in report["test_removed"]]
    return "\n".join(lines) + "\n"


def finish_build(title: str, report_dir: str, splits: dict[str, list[Record]], report: dict,
                 generate: Callable[[list[Record]], Any]) -> dict:
    """The end of a builder's _split_generators: write the reports, log, and return one
    generator per non-empty split (tfds cannot hold an empty split)."""
    write_reports(report_dir, {"build_report.json": report, "dedup_report.md": dedup_markdown(report)})
    log.info("%s: classes %s, %s; %d unreadable files skipped; report in %s", title, report["class_names"],
             {k: len(v) for k, v in splits.items()}, len(report["unreadable"]), report_dir)
    empty = [name for name, recs in splits.items() if not recs]
    if empty:
        log.warning("%s: splits %s would be empty and are not created", title, empty)
    return {name: generate(recs) for name, recs in splits.items() if recs}


def image_features(class_names: Sequence[str]):
    """The tfds features of both folder builders: image, label (with these names), filename."""
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8),
        "label": tfds.features.ClassLabel(names=list(class_names)),
        "filename": tfds.features.Text(),
    })


def generate_examples(records: Sequence[Record], encoded: dict[str, bytes]):
    """tfds examples (key, features) of one split."""
    for rec in records:
        yield rec.relpath, {"image": encoded[rec.relpath], "label": rec.label, "filename": rec.relpath}
