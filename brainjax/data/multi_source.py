"""tensorflow-datasets builder `multi_source`: several labelled sources in one run.

    config.sources = (default.source("sartaj", "brain_tumor_mri/sartaj", ...),
                      default.source("figshare", "image_folder", manual_dir=..., ...))

Each source is an ordinary brainjax dataset (a tfds name, or `image_folder` with its
`manual_dir`), built first by its own builder. This builder then reads each source's
train / validation / test split specs, maps its class names through the source's
`class_map` into the run's class list (the sorted union of every source's mapped names: a
source may lack classes), and writes one dataset with splits `train`, `validation`,
`test` (and `holdout`, the held-out source's every image, with config.holdout_source).
Every example carries its `source` (a ClassLabel over the source names).

Before writing, the near-duplicate check runs over the images of every source at once
(`provenance`): a duplicate group is kept in one place only (training first), and a
held-out source loses its copies of training images. `build_report.json`,
`provenance.json` and `provenance.md` sit in the builder's folder of the tfds data_dir.

The key of a build is the source list (names, datasets, class maps, split specs, each
source builder's own config name and version: an `image_folder` source's includes its
file manifest) and the held-out source, so any change gets a new build.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from brainjax import files
from brainjax.data import decode, folder_splits, images, provenance
from brainjax.data.image_folder import parse_class_map
from brainjax.errors import UserError

log = logging.getLogger("brainjax")
SPLIT_NAMES = ("train", "validation", "test", provenance.HOLDOUT)
ROLE_FIELDS = {"train": "train_split", "validation": "val_split", "test": "test_split"}
SOURCE_FIELDS = ("name", "dataset", "data_dir", "manual_dir", "class_map", "weight", "download", "test_fraction",
                 "train_split", "val_split", "test_split")


@dataclasses.dataclass
class MultiSourceConfig(tfds.core.BuilderConfig):
    spec: str = ""  # JSON: {"sources": [...], "holdout": name, "fingerprints": {...}}
    class_names: tuple[str, ...] = ()
    source_names: tuple[str, ...] = ()


def source_list(config: Any) -> list[dict]:
    """config.sources as plain dicts, checked: every field present, unique non-empty names,
    positive weights, a known holdout_source. Raises UserError naming the field."""
    sources = [dict(s.to_dict() if hasattr(s, "to_dict") else s) for s in config["sources"]]
    for i, s in enumerate(sources):
        missing = [f for f in SOURCE_FIELDS if f not in s]
        if missing:
            raise UserError(f"config.sources[{i}] lacks {missing}: build each source with configs/default.py "
                            "`source(name, dataset, ...)`, which fills every field")
        if not str(s["name"]) or "/" in str(s["name"]):
            raise UserError(f"config.sources[{i}].name={s['name']!r}: give each source a short name without '/'")
        if not float(s["weight"]) > 0:
            raise UserError(f"config.sources[{i}].weight={s['weight']!r} must be > 0 (the source's share of each "
                            "training epoch, relative to the others)")
        parse_class_map(s["class_map"])
    names = [s["name"] for s in sources]
    if len(set(names)) != len(names):
        raise UserError(f"config.sources: names {names} repeat; each source needs its own name")
    holdout = str(config["holdout_source"])
    if holdout and holdout not in names:
        raise UserError(f"config.holdout_source={holdout!r} is not a source (config.sources names: {names})")
    if holdout and len(names) < 2:
        raise UserError("config.holdout_source needs at least two sources: one to hold out, one to train on")
    return sources


def source_fields(source: Mapping[str, Any], config: Any) -> dict:
    """The dataset fields of one source, as `pipeline.builder_for` takes them (the run's
    slice_axis / volume_min_foreground; its own data_dir, else the run's)."""
    return {"dataset": source["dataset"], "data_dir": source["data_dir"] or config["data_dir"],
            "manual_dir": source["manual_dir"], "class_map": "", "test_fraction": source["test_fraction"],
            "download": source["download"], "slice_axis": config["slice_axis"],
            "volume_min_foreground": config["volume_min_foreground"]}


def mapped_names(source: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """A source's class names after its class_map."""
    mapping = parse_class_map(source["class_map"])
    unknown = sorted(set(mapping) - set(names))
    if unknown:
        raise UserError(f"config.sources[{source['name']}].class_map names classes {unknown} that the source "
                        f"{source['dataset']} does not have (it has {list(names)})")
    return [mapping.get(n, n) for n in names]


def fingerprint(builder: Any) -> str:
    """A source builder's identity in the build key: name, config (an image_folder
    config's name holds its file manifest's hash) and version."""
    config = builder.builder_config.name if builder.builder_config else ""
    return f"{builder.name}/{config}@{builder.version}"


def multi_config(sources: Sequence[Mapping[str, Any]], builders: Mapping[str, Any], holdout: str) -> MultiSourceConfig:
    """The tfds config of one source list (see the module docstring for its key)."""
    class_names = sorted({n for s in sources for n in
                          mapped_names(s, builders[s["name"]].info.features["label"].names)})
    fingerprints = {s["name"]: fingerprint(builders[s["name"]]) for s in sources}
    keep = ("name", "dataset", "class_map", "train_split", "val_split", "test_split")
    spec = json.dumps({"sources": [{k: s[k] for k in keep} for s in sources], "holdout": holdout,
                       "fingerprints": fingerprints, "near_threshold": provenance.COPY_THRESHOLD}, sort_keys=True)
    slug = "_".join(s["name"] for s in sources)[:40]
    return MultiSourceConfig(name=f"{slug}_{hashlib.sha1(spec.encode()).hexdigest()[:10]}",
                             description=f"sources {[s['name'] for s in sources]}", spec=spec,
                             class_names=tuple(class_names), source_names=tuple(s["name"] for s in sources))


def read_source(source: Mapping[str, Any], builder: Any, class_names: Sequence[str], role: str,
                spec: str) -> tuple[list[provenance.Entry], list[np.ndarray]]:
    """(entries, uint8 [H, W] images) of one source split spec, labels in the run's classes."""
    names = mapped_names(source, builder.info.features["label"].names)
    entries, pixels = [], []
    ds = builder.as_dataset(split=spec, shuffle_files=False, read_config=tfds.ReadConfig(add_tfds_id=False))
    for i, ex in enumerate(tfds.as_numpy(ds)):
        name = ex["filename"].decode() if "filename" in ex else f"{i}"
        entries.append(provenance.Entry(source["name"], role, class_names.index(names[int(ex["label"])]),
                                        f"{spec}:{name}"))
        pixels.append(decode.cap_size(decode.as_gray(decode.to_uint8(np.asarray(ex["image"])))))
    return entries, pixels


def report_markdown_counts(report: dict) -> str:
    """The split x source table of build_report.md."""
    sources = report["sources"]
    lines = [f"# multi_source/{report['config']}: build report", "",
             "| split | images | " + " | ".join(sources) + " |", "|---|---|" + "---|" * len(sources)]
    for split, s in report["splits"].items():
        lines.append(f"| {split} | {s['count']} | " + " | ".join(str(s["per_source"].get(n, 0)) for n in sources) + " |")
    return "\n".join(lines) + "\n\nCopies removed across sources: see provenance.md.\n"


class MultiSource(tfds.core.GeneratorBasedBuilder):
    """Several sources, deduplicated across them (see the module docstring). Set
    `source_builders` ({name: prepared builder}) before `download_and_prepare`."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    SPLIT_NAMES = SPLIT_NAMES
    source_builders: Mapping[str, Any] = {}

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=list(cfg.class_names)),
                "source": tfds.features.ClassLabel(names=list(cfg.source_names)),
                "filename": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
        )

    def report_dir(self) -> str:
        return os.path.join(self._data_dir_root, self.name, self.builder_config.name)

    def build_report(self) -> dict:
        """build_report.json of this build ({} before it is built)."""
        path = os.path.join(self.report_dir(), "build_report.json")
        return files.read_json(path, "a multi_source build report") if os.path.isfile(path) else {}

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        spec = json.loads(cfg.spec)
        entries, pixels = [], []
        for source in spec["sources"]:
            builder = self.source_builders[source["name"]]
            for role, field in ROLE_FIELDS.items():
                role_here = provenance.HOLDOUT if source["name"] == spec["holdout"] else role
                e, p = read_source(source, builder, cfg.class_names, role_here, source[field])
                entries += e
                pixels += p
        index = images.DuplicateIndex()
        for e, p in zip(entries, pixels):
            index.add(f"{e.source}:{e.name}", p.tobytes(), p)
        keep, prov = provenance.plan(entries, index, cfg.source_names, cfg.class_names, spec["near_threshold"])
        splits = {name: [i for i in np.nonzero(keep)[0] if entries[i].role == name] for name in SPLIT_NAMES}
        report = {"dataset": self.name, "config": cfg.name, "sources": list(cfg.source_names),
                  "class_names": list(cfg.class_names), "holdout": spec["holdout"] or None,
                  "splits": {name: {"count": len(idx),
                                    "per_source": {s: sum(entries[i].source == s for i in idx) for s in cfg.source_names},
                                    "per_class": {c: sum(entries[i].label == k for i in idx)
                                                  for k, c in enumerate(cfg.class_names)}}
                             for name, idx in splits.items() if idx},
                  "removed_copies": prov["removed_count"]}
        self.write_reports(report, prov)
        source_index = {s: k for k, s in enumerate(cfg.source_names)}
        return {name: self._generate_examples(entries, pixels, idx, source_index)
                for name, idx in splits.items() if idx}

    def write_reports(self, report: dict, prov: dict) -> None:
        folder = self.report_dir()
        folder_splits.write_reports(folder, {
            "build_report.json": report, "build_report.md": report_markdown_counts(report),
            "provenance.json": prov, "provenance.md": provenance.markdown(prov)})
        log.info("multi_source/%s: %s; %d cross-source copy pairs; reports in %s", report["config"],
                 {k: v["count"] for k, v in report["splits"].items()},
                 sum(p["copies"] for p in prov["pairs"]), folder)

    def _generate_examples(self, entries, pixels, idx, source_index):
        for i in idx:
            e = entries[i]
            yield f"{e.source}/{e.role}/{i:07d}", {"image": images.encode_png(pixels[i]), "label": e.label,
                                                   "source": source_index[e.source],
                                                   "filename": f"{e.source}/{e.name}"}
