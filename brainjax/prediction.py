"""--mode=predict and --mode=gallery: real scanner inputs through the served model.

`--images` takes files, folders (recursively: every supported file, each folder of DICOM
files as one series) and volumes, all read by `brainjax.data.decode` exactly as a
dataset build reads them. Slices are decoded input by input and scored in batches of
`config.eval_batch_size`, so memory does not grow with the number of files (except with
`eval.adapt_batchnorm`, whose statistics need every image at once). Per slice it prints
the class, the temperature-scaled probabilities, the quality estimate, the OOD score and
why it abstains; `--predictions=PATH.csv` writes the same as one row per slice; a
volume or series also gets one summary line. An unreadable file is one ERROR line
naming it, and the rest are still scored.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
import sys
from typing import Any, Iterator, Sequence

import jax
import ml_collections
import numpy as np

from brainjax import evaluators, explain as explain_lib, files, inference, plots, preflight, schema, steps
from brainjax.data import decode

log = logging.getLogger("brainjax")


def read_options(config: Any) -> dict:
    """The decoder's options a run uses (its slicing of volumes)."""
    return {"slice_axis": str(config.slice_axis),
            "min_foreground": float(config.volume_min_foreground)}


class Inputs:
    """The decoded inputs of --images, one at a time; an unreadable one is an ERROR line
    on stderr (counted in `failures`) and the rest are still read."""

    def __init__(self, paths: Sequence[str], config: Any):
        self.sources = decode.expand_inputs(paths)
        self.options = read_options(config)
        self.failures = 0

    def __iter__(self) -> Iterator[decode.Decoded]:
        for path in self.sources:
            try:
                decoded = decode.read(path, **self.options)
            except decode.UnreadableImage as err:
                print(f"ERROR {err}", file=sys.stderr, flush=True)
                self.failures += 1
                continue
            if decoded.skipped:
                log.info("%s: %d slices with no head in them skipped", path, decoded.skipped)
            yield decoded


@dataclasses.dataclass
class Predictor:
    """The served model of a run, with its calibration and OOD rule."""
    model: Any
    variables: dict
    class_names: list[str]
    calibration: dict | None
    ood: dict | None
    serve: Any
    batch: int
    size: int

    def score(self, images: np.ndarray) -> dict:
        """{probabilities, quality?, ood_score?, abstain?} of uint8 images [N, H, W, 1]."""
        out = served_in_batches(self.serve, images, self.batch)
        if self.calibration is not None:
            out["abstain"] = inference.abstain_decisions(out["probabilities"], out.get("quality"), self.calibration,
                                                         out.get("ood_score"))
        return out


def load_predictor(config: ml_collections.ConfigDict, workdir: str, rule: str | None = None,
                   adapt_images: np.ndarray | None = None) -> Predictor:
    """The run's best model, served as export serves it. `rule`: an abstention rule set
    on the command line (applied with the thresholds fitted for it). `adapt_images`:
    BatchNorm statistics re-estimated on these (eval.adapt_batchnorm)."""
    class_names = inference.class_names(config, workdir)
    model, variables = inference.restore_for_inference(config, workdir, len(class_names))
    cal = inference.load_calibration(workdir)
    if cal is None:
        log.warning("no calibration in %s (run --mode=evaluate): raw softmax, no abstention", workdir)
    elif rule is not None:
        cal = {**cal, "rule": rule}
    adapt = evaluators.adapter_from_config(config, model, variables.get("batch_stats", {}))
    if adapt is not None and adapt_images is not None and len(adapt_images):
        variables, info = evaluators.adapt_on_images(adapt, variables, adapt_images)
        log.info("adapted BatchNorm statistics to the %d images (%d passes)%s", len(adapt_images), info["passes"],
                 "; fewer than 32 images give noisy statistics" if len(adapt_images) < 32 else "")
    ood = inference.load_ood(workdir, cal)
    serve = jax.jit(inference.serving_fn(model, variables, schema.temperature(cal), ood))
    return Predictor(model, variables, class_names, cal, ood, serve, int(config.eval_batch_size),
                     int(config.image_size))


def served_in_batches(serve, images: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """`serve` over `images` in batches of `batch` (the last one padded, so one compiled
    shape serves every batch), outputs concatenated."""
    parts: dict[str, list] = {}
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        for key, value in jax.device_get(serve(padded)).items():
            parts.setdefault(key, []).append(np.asarray(value)[:len(chunk)])
    return {key: np.concatenate(values) for key, values in parts.items()}


def slice_batches(decoded: Iterator[decode.Decoded], size: int, batch: int) -> Iterator[tuple[list, np.ndarray]]:
    """(slices, uint8 model inputs [n, size, size, 1]) in batches of at most `batch`,
    decoding one input at a time."""
    pending: list[decode.Slice] = []
    for item in decoded:
        pending += item.slices
        while len(pending) >= batch:
            head, pending = pending[:batch], pending[batch:]
            yield head, decode.model_inputs(head, size)
    if pending:
        yield pending, decode.model_inputs(pending, size)


def predict_images(config: ml_collections.ConfigDict, workdir: str, paths: Sequence[str],
                   rule: str | None = None) -> dict:
    """Everything --mode=predict computes for `paths`, gathered (for a few files; the
    command itself streams): paths (one label per slice), slices, class_names,
    probabilities, quality, ood_score, abstain (None without calibration), images,
    failures, model, variables, ood."""
    inputs = Inputs(paths, config)
    slices = [s for d in inputs for s in d.slices]
    images = decode.model_inputs(slices, int(config.image_size))
    adapt = config.eval.adapt_batchnorm
    predictor = load_predictor(config, workdir, rule, adapt_images=images if adapt else None)
    out = predictor.score(images) if len(images) else {}
    return dict(paths=[label(s) for s in slices], slices=slices, class_names=predictor.class_names,
                failures=inputs.failures, model=predictor.model, variables=predictor.variables,
                probabilities=out.get("probabilities"), quality=out.get("quality"),
                ood_score=out.get("ood_score"), abstain=out.get("abstain"), images=images if len(images) else None,
                ood=ood_summary(predictor.ood))


def ood_summary(ood: dict | None) -> dict | None:
    return None if ood is None else {k: ood[k] for k in ("method", "threshold")}


def label(s: decode.Slice) -> str:
    """How a slice is named in output: the file, with [slice k] for volumes and series."""
    return f"{s.source}[slice {s.index}]" if s.of_volume else s.source


def abstain_reason(out: dict, i: int, ood: dict | None) -> str:
    """'' (kept), 'out_of_distribution' or 'low_confidence' for row i."""
    if out.get("abstain") is None or not out["abstain"][i]:
        return ""
    if ood is not None and inference.is_out_of_distribution(out["ood_score"][i], ood):
        return "out_of_distribution"
    return "low_confidence"


def line_of(name: str, out: dict, i: int, class_names: Sequence[str], ood: dict | None) -> str:
    """One printed line per slice."""
    p = out["probabilities"][i]
    ranked = "  ".join(f"{class_names[j]} {p[j]:.3f}" for j in np.argsort(-p))
    q = f"quality={out['quality'][i]:.2f}" if out.get("quality") is not None else "quality=n/a"
    text = f"{name}: {class_names[int(p.argmax())]}  ({ranked})  {q}"
    if out.get("ood_score") is not None:
        text += f"  ood={out['ood_score'][i]:.4g}"
    reason = abstain_reason(out, i, ood)
    if reason == "out_of_distribution":
        text += (f"  ABSTAIN out of distribution: {ood['method']} score {out['ood_score'][i]:.4g} > threshold "
                 f"{ood['threshold']:.4g} (unlike the training scans; do not rely on this prediction)")
    elif reason:
        text += "  ABSTAIN low quality: do not rely on this prediction"
    return text


@dataclasses.dataclass
class VolumeTally:
    """The running summary of one multi-slice input."""
    probabilities: list = dataclasses.field(default_factory=list)
    indices: list = dataclasses.field(default_factory=list)
    slices: int = 0

    def add(self, p: np.ndarray, index: int, kept: bool) -> None:
        self.slices += 1
        if kept:
            self.probabilities.append(p)
            self.indices.append(index)

    def summary(self, source: str, class_names: Sequence[str]) -> str:
        if not self.probabilities:
            return f"{source}: volume summary: ABSTAIN (no slice of {self.slices} was kept)"
        mean = np.mean(self.probabilities, axis=0)
        best = int(mean.argmax())
        where = [k for k, p in zip(self.indices, self.probabilities) if int(np.argmax(p)) == best]
        span = f"slices {min(where)}-{max(where)}" if where else "no single slice"
        return (f"{source}: volume summary: {class_names[best]} (mean probability {mean[best]:.3f} over "
                f"{len(self.probabilities)} of {self.slices} slices kept; predicted on {span})")


CSV_FIXED = ("source", "slice")


def csv_header(class_names: Sequence[str]) -> list[str]:
    return [*CSV_FIXED, *(f"p_{c}" for c in class_names), "predicted", "quality", "ood_score", "abstain_reason"]


def csv_row(s: decode.Slice, out: dict, i: int, class_names: Sequence[str], ood: dict | None) -> list:
    p = out["probabilities"][i]
    value = lambda key: "" if out.get(key) is None else f"{float(out[key][i]):.6g}"
    return [s.source, s.index, *(f"{x:.6f}" for x in p), class_names[int(p.argmax())], value("quality"),
            value("ood_score"), abstain_reason(out, i, ood)]


def predict_files(config: ml_collections.ConfigDict, workdir: str, paths: Sequence[str], explain: bool = False,
                  overrides: Sequence[str] = (), predictions: str | None = None) -> int:
    """--mode=predict (see the module docstring). Returns the number of inputs that
    could not be read."""
    preflight.check(config, workdir, "predict", images=paths, overrides=overrides)
    inputs = Inputs(paths, config)
    outputs = [predictions] if predictions else []
    preflight.check_outputs(outputs + (explain_paths(workdir, inputs.sources) if explain else []), inputs.sources)
    rule = config.eval.abstain_rule if "eval.abstain_rule" in overrides else None
    source: Any = inputs
    adapt_images = None
    if config.eval.adapt_batchnorm:  # statistics from every image: gathered, not streamed
        source = list(inputs)
        adapt_images = decode.model_inputs([s for d in source for s in d.slices], int(config.image_size))
    predictor = load_predictor(config, workdir, rule, adapt_images)
    stream = Stream(workdir, inputs.sources, explain, predictions, predictor)
    for slices, images in slice_batches(iter(source), predictor.size, predictor.batch):
        stream.batch(slices, images, predictor.score(images))
    stream.finish()
    return inputs.failures


class Stream:
    """Where predict's results go, batch by batch: printed lines, the CSV, Grad-CAM
    overlays and the volume summaries."""

    def __init__(self, workdir: str, sources: Sequence[str], explain: bool, predictions: str | None,
                 predictor: Predictor):
        self.workdir, self.explain, self.predictions, self.predictor = workdir, explain, predictions, predictor
        self.rows = io.StringIO() if predictions else None
        self.tallies: dict[str, VolumeTally] = {}
        self.names = dict(zip(sources, files.output_names(sources)))

    def batch(self, slices: Sequence[decode.Slice], images: np.ndarray, out: dict) -> None:
        class_names, ood = self.predictor.class_names, self.predictor.ood
        for i, s in enumerate(slices):
            name = label(s)
            print(line_of(name, out, i, class_names, ood), flush=False)
            if self.rows is not None:
                if not self.rows.tell():
                    csv.writer(self.rows).writerow(csv_header(class_names))
                csv.writer(self.rows).writerow(csv_row(s, out, i, class_names, ood))
            if name != s.source:
                kept = not abstain_reason(out, i, ood)
                self.tallies.setdefault(s.source, VolumeTally()).add(out["probabilities"][i], s.index, kept)
        if self.explain:
            self.write_explanations(slices, images, out)
        sys.stdout.flush()

    def write_explanations(self, slices: Sequence[decode.Slice], images: np.ndarray, out: dict) -> None:
        model, variables, class_names = self.predictor.model, self.predictor.variables, self.predictor.class_names
        batch = steps.to_float_images(images)
        heatmaps = np.asarray(jax.jit(lambda v, x: explain_lib.grad_cam(model, v, x))(variables, batch))
        for i, s in enumerate(slices):
            path = os.path.join(self.workdir, "explain", self.output_name(s))
            p = out["probabilities"][i]
            plots.save_overlay(np.asarray(batch[i])[..., 0], heatmaps[i], path,
                               title=f"{os.path.basename(s.source)}: {class_names[int(p.argmax())]} {p.max():.2f}")
            print(f"{label(s)}: wrote {path}")

    def output_name(self, s: decode.Slice) -> str:
        """Unique per slice: the input's name (files.output_names over the inputs), with
        the slice index for volumes."""
        base = self.names[s.source]
        return base if label(s) == s.source else f"{base[:-4]}_slice{s.index:04d}.png"

    def finish(self) -> None:
        for source, tally in self.tallies.items():
            print(tally.summary(source, self.predictor.class_names))
        if self.rows is not None:
            files.write_text(self.predictions, self.rows.getvalue())
            print(f"wrote {self.predictions}")


def explain_paths(workdir: str, paths: Sequence[str]) -> list[str]:
    """<workdir>/explain/<unique name per 2-D input>.png (what preflight checks)."""
    return [os.path.join(workdir, "explain", name) for name in files.output_names(paths)]


def gallery_files(config: ml_collections.ConfigDict, workdir: str, paths: Sequence[str]) -> int:
    """Writes <workdir>/gallery/<name>.png per input (names from the inputs' relative
    paths, never an input's own path): every corruption x severity on its slice (the
    middle one of a volume)."""
    preflight.check(config, workdir, "gallery", images=paths)
    inputs = Inputs(paths, config)
    outputs = dict(zip(inputs.sources, (os.path.join(workdir, "gallery", n) for n in
                                        files.output_names(inputs.sources))))
    preflight.check_outputs(list(outputs.values()), inputs.sources)
    for decoded in inputs:
        if not decoded.slices:
            continue
        middle = decoded.slices[len(decoded.slices) // 2]
        image = decode.model_input(middle.pixels, int(config.image_size))
        plots.gallery(image.astype(np.float32) / 255.0, outputs[middle.source])
        print(f"{middle.source}: wrote {outputs[middle.source]}")
    return inputs.failures
