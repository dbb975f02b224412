"""Cross-source provenance: which images of one source are copies of another's, and where
each duplicate group may sit in a run that mixes sources.

Public MRI sets are re-mixes of each other (most of Sartaj's tumour images are re-encoded
Figshare slices), so a run over several sources must deduplicate across them or its
validation and held-out scores leak. The duplicate rule is the folder builders' own
(`images.DuplicateIndex`: byte/pixel hash, or mirror-invariant thumbnail cosine), run over
the images of every source at once, at COPY_THRESHOLD: a copy between sources is the same
slice re-encoded or resized, which scores far above the folder builders' NEAR_THRESHOLD
(0.98, set to catch neighbouring slices too). Measured on the 32 px thumbnails: Figshare
slices with a Sartaj Training copy number 2,300 at 0.98, 2,292 at 0.985 and 2,289-2,290
from 0.99 to 0.997 (a plateau; the Figshare README's own rule finds 2,292), while distinct
phantom slices reach 0.990 within one site (58 pairs above 0.98) and 0.953 across sites.

Placement: a duplicate group is kept in the earliest role any of its members has, in the
order train, validation, test; its members in a later role are removed (so no group is
in two splits, and training keeps what it has). A held-out source (`holdout`) keeps
every image except copies of training images. Every removal is reported.

Pure numpy: no TensorFlow, no JAX.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from brainjax.data import images

ROLES = ("train", "validation", "test")  # placement order; "holdout" is placed against train only
HOLDOUT = "holdout"
COPY_THRESHOLD = 0.995


@dataclasses.dataclass(frozen=True)
class Entry:
    """One image of one source, as the mixed build sees it."""
    source: str
    role: str  # one of ROLES, or HOLDOUT
    label: int  # in the run's class list
    name: str  # the source's own name for it (file name, or split:index)


def placement(entries: Sequence[Entry], groups: Sequence[Sequence[int]]) -> tuple[np.ndarray, list[dict]]:
    """(keep mask, removed rows): the placement rule of the module docstring. `groups`:
    near-duplicate groups (index lists into entries, exact groups included)."""
    keep = np.ones(len(entries), bool)
    removed = []
    rank = {role: i for i, role in enumerate(ROLES)}
    for group in groups:
        placed = [j for j in group if entries[j].role in rank]
        first = min((rank[entries[j].role] for j in placed), default=None)
        train = [j for j in group if entries[j].role == "train"]
        for j in group:
            e = entries[j]
            if e.role == HOLDOUT:
                match = train[0] if train else None
            else:
                later = first is not None and rank[e.role] > first
                match = next((k for k in placed if rank[entries[k].role] == first), None) if later else None
            if match is not None:
                keep[j] = False
                m = entries[match]
                removed.append({"source": e.source, "role": e.role, "name": e.name, "label": e.label,
                                "copy_of": {"source": m.source, "role": m.role, "name": m.name, "label": m.label}})
    return keep, removed


def pair_copies(entries: Sequence[Entry], sim: np.ndarray, hashes: Sequence[str], threshold: float,
                source_names: Sequence[str], class_names: Sequence[str], examples: int = 20) -> list[dict]:
    """For each ordered pair (a, b) of different sources: how many images of a have a copy
    in b (exact hash, or similarity >= threshold), per class of a, and the copies whose
    labels disagree (counted per (label in a, label in b), with a few named)."""
    source = np.array([e.source for e in entries])
    label = np.array([e.label for e in entries])
    out = []
    for a in source_names:
        ia = np.nonzero(source == a)[0]
        for b in source_names:
            ib = np.nonzero(source == b)[0]
            if a == b or not len(ia) or not len(ib):
                continue
            block = sim[np.ix_(ia, ib)]
            by_hash = {hashes[j]: j for j in ib}
            best = ib[block.argmax(1)]
            exact = np.array([hashes[i] in by_hash for i in ia])
            best = np.where(exact, [by_hash.get(hashes[i], -1) for i in ia], best)
            is_copy = exact | (block.max(1) >= threshold)
            disagree: dict[str, int] = {}
            named = []
            for i, j in zip(ia[is_copy], best[is_copy]):
                if label[i] != label[j]:
                    key = f"{class_names[label[i]]} -> {class_names[label[j]]}"
                    disagree[key] = disagree.get(key, 0) + 1
                    if len(named) < examples:
                        named.append({"a": entries[i].name, "a_label": class_names[label[i]],
                                      "b": entries[j].name, "b_label": class_names[label[j]]})
            out.append({"a": a, "b": b, "images_in_a": int(len(ia)), "copies": int(is_copy.sum()),
                        "per_class": {c: int((is_copy & (label[ia] == k)).sum()) for k, c in enumerate(class_names)
                                      if (label[ia] == k).any()},
                        "labels_disagree": int(sum(disagree.values())), "disagreements": disagree,
                        "disagreement_examples": named})
    return out


def plan(entries: Sequence[Entry], index: images.DuplicateIndex, source_names: Sequence[str],
         class_names: Sequence[str], threshold: float = COPY_THRESHOLD) -> tuple[np.ndarray, dict]:
    """(keep mask, provenance report) of the images of every source (one index entry each,
    in the order of `entries`)."""
    sim = index.similarity() if len(entries) else np.zeros((0, 0), np.float32)
    _, near = images.duplicate_groups(index, threshold, sim)
    keep, removed = placement(entries, near)
    report = {
        "sources": list(source_names), "class_names": list(class_names), "near_threshold": threshold,
        "thumbnail": images.THUMB, "images": int(len(entries)), "duplicate_groups": len(near),
        "cross_source_groups": sum(len({entries[j].source for j in g}) > 1 for g in near),
        "pairs": pair_copies(entries, sim, index.hashes, threshold, source_names, class_names),
        "removed": removed,
        "removed_count": {f"{s}/{r}": sum(x["source"] == s and x["role"] == r for x in removed)
                          for s in source_names for r in (*ROLES, HOLDOUT)
                          if any(x["source"] == s and x["role"] == r for x in removed)},
    }
    return keep, report


def markdown(report: dict) -> str:
    """provenance.md: the pair table, label disagreements and the removals."""
    lines = ["# Cross-source provenance", "",
             f"{report['images']} images of {len(report['sources'])} sources ({', '.join(report['sources'])}); "
             f"copies: identical pixels or a mirror-invariant {report['thumbnail']}x{report['thumbnail']} "
             f"thumbnail cosine >= {report['near_threshold']}.", "",
             "| images of | copies in | of | copies | per class | labels disagree |", "|---|---|---|---|---|---|"]
    for p in report["pairs"]:
        per_class = ", ".join(f"{c} {n}" for c, n in p["per_class"].items())
        lines.append(f"| {p['a']} | {p['b']} | {p['images_in_a']} | {p['copies']} | {per_class} | "
                     f"{p['labels_disagree']} |")
    for p in report["pairs"]:
        if p["labels_disagree"]:
            lines += ["", f"## {p['a']} vs {p['b']}: labels that disagree", ""]
            lines += [f"- {k}: {n}" for k, n in p["disagreements"].items()]
            lines += [f"  - `{x['a']}` ({x['a_label']}) = `{x['b']}` ({x['b_label']})"
                      for x in p["disagreement_examples"]]
    lines += ["", "## Removed from the run (kept in one place only: training first)", ""]
    lines += [f"- {k}: {n}" for k, n in report["removed_count"].items()] or ["- none"]
    return "\n".join(lines) + "\n"
