"""Out-of-distribution scores from the trained model alone: is this scan from somewhere
the model has never seen (another site, another sequence)?

The quality head learns the synthetic corruptions of training; a new sequence or scanner
is not one of them, and the softmax stays confident on it. These scores need no labels
and no data from the new site (higher = further from the training data):

  mahalanobis  min over classes of the Mahalanobis distance of the pooled backbone
               features to the class mean, with one shared covariance (Lee et al. 2018),
               shrunk toward its mean eigenvalue: S = (1 - a) C + a tr(C)/D I
  mahalanobis_l2  the same on L2-normalised pooled features (Mahalanobis++, Mueller &
               Hein 2025)
  energy       -T logsumexp(logits / T) (Liu et al. 2020), T the fitted temperature
  max_prob     1 - the calibrated top probability (the baseline the others must beat)

The Gaussian statistics are exact over the whole training split (`config.train_split`,
clean images, eval mode): a first pass sums features per class, a second the scatter
around the class means; every pass sums over devices and processes (`psum`, padding
masked) and accumulates batches on the host in float64. They are saved next to the
checkpoints (`ood_stats.npz`, report.write_report), and the score is part of the served function, so predict
and the exported model compute the same number.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from brainjax import parallel, plots, steps
from brainjax.data import decode
from brainjax.errors import UserError

log = logging.getLogger("brainjax")
METHODS = ("mahalanobis", "mahalanobis_l2", "energy", "max_prob")
DEFAULT_DIRS = ("../shared/data/other_sequences",)


def logits_and_pooled(model: Any, variables: Mapping, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(logits [N, K], pooled backbone features [N, D] float32) of float images: one
    forward pass; the Classifier sows its pooled features."""
    variables = {k: v for k, v in variables.items() if k != "intermediates"}  # e.g. from model.init
    logits, state = model.apply(variables, images, train=False, mutable=["intermediates"])
    return logits, state["intermediates"]["pooled"][-1]


def feature_views(pooled: jax.Array) -> dict[str, jax.Array]:
    """The feature spaces a Gaussian is fitted in: the pooled features as they are, and
    L2-normalised (Mahalanobis++, Mueller & Hein 2025: the norm varies with contrast and
    scanner more than with content, and normalising it makes the Gaussian fit better)."""
    return {"raw": pooled, "l2": pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)}


def moments_step(variables: Mapping, batch: Mapping[str, jax.Array], means: Mapping[str, jax.Array], *,
                 model: Any, num_classes: int, axis_name: str) -> dict:
    """Per feature view: masked per-class feature counts and sums, and the scatter around
    `means[view]` [K, D], summed over the devices and processes of the pmap axis."""
    _, pooled = logits_and_pooled(model, variables, steps.to_float_images(batch["image"]))
    mask = batch["mask"].astype(jnp.float32)
    onehot = jax.nn.one_hot(batch["label"], num_classes, dtype=jnp.float32) * mask[:, None]
    out = {"count": onehot.sum(0)}
    for view, f in feature_views(pooled).items():
        centred = (f - onehot @ means[view]) * mask[:, None]
        out[f"sum_{view}"], out[f"scatter_{view}"] = onehot.T @ f, centred.T @ centred
    return jax.lax.psum(out, axis_name)


def make_moments_fn(model: Any, num_classes: int) -> Callable:
    return parallel.compiled_step(functools.partial(moments_step, model=model, num_classes=num_classes),
                              num_broadcast=1)


def _accumulate(step: Callable, rvariables: Any, batches: Iterable[Mapping[str, np.ndarray]],
                means: Mapping[str, np.ndarray]) -> dict:
    total: dict = {}
    device_means = {k: jnp.asarray(v, jnp.float32) for k, v in means.items()}
    for batch in batches:
        out = parallel.first_device(step(rvariables, parallel.shard(
            {k: batch[k] for k in ("image", "label", "mask")}), device_means))
        out = {k: np.asarray(v, np.float64) for k, v in out.items()}
        total = out if not total else {k: total[k] + out[k] for k in total}
    return total


VIEWS = {"mahalanobis": "raw", "mahalanobis_l2": "l2"}  # method -> feature view


def fit_gaussian(step: Callable, rvariables: Any, batches_fn: Callable[[], Iterable], num_classes: int,
                 dim: int, shrinkage: float) -> dict:
    """{"counts" [K], "shrinkage", and per feature view ("", "_l2"): "means" [K, D],
    "precision" [D, D]} over the whole split (two passes: means, then the scatter around
    them)."""
    zeros = {view: np.zeros((num_classes, dim)) for view in VIEWS.values()}
    first = _accumulate(step, rvariables, batches_fn(), zeros)
    counts = first["count"]
    if (counts == 0).any():
        log.warning("OOD statistics: classes %s have no training example; their means are 0",
                    np.nonzero(counts == 0)[0].tolist())
    means = {view: first[f"sum_{view}"] / np.maximum(counts, 1)[:, None] for view in VIEWS.values()}
    second = _accumulate(step, rvariables, batches_fn(), means)
    stats = {"counts": counts, "shrinkage": np.float64(shrinkage)}
    for view in VIEWS.values():
        suffix = "" if view == "raw" else f"_{view}"
        gaussian = gaussian_from_moments(means[view], second[f"scatter_{view}"], counts, shrinkage)
        stats[f"means{suffix}"], stats[f"precision{suffix}"] = gaussian["means"], gaussian["precision"]
    return stats


def gaussian_for(stats: Mapping, method: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """(means, precision, whether to L2-normalise the features) of a Mahalanobis method."""
    suffix = "" if VIEWS[method] == "raw" else f"_{VIEWS[method]}"
    return stats[f"means{suffix}"], stats[f"precision{suffix}"], VIEWS[method] == "l2"


def mahalanobis_score(pooled: jax.Array, means: jax.Array, precision: jax.Array, normalize: bool) -> jax.Array:
    """`mahalanobis` in the feature view a method was fitted in."""
    return mahalanobis(feature_views(pooled)["l2" if normalize else "raw"], means, precision)


def gaussian_from_moments(means: np.ndarray, scatter: np.ndarray, counts: np.ndarray, shrinkage: float) -> dict:
    """Shared, shrunk covariance and its inverse (float64 on the host)."""
    dim = scatter.shape[0]
    cov = scatter / max(float(counts.sum()), 1.0)
    target = np.trace(cov) / dim
    shrunk = (1.0 - shrinkage) * cov + shrinkage * max(target, 1e-12) * np.eye(dim)
    return {"means": means, "precision": np.linalg.inv(shrunk), "counts": counts,
            "shrinkage": np.float64(shrinkage)}


def mahalanobis(pooled: jax.Array, means: jax.Array, precision: jax.Array) -> jax.Array:
    """min_k (f - mu_k)^T P (f - mu_k) per row, float32 [N]."""
    diff = pooled[:, None, :] - means[None, :, :]  # [N, K, D]
    return jnp.min(jnp.einsum("nkd,de,nke->nk", diff, precision, diff), axis=-1)


def energy(logits: jax.Array, temperature: float) -> jax.Array:
    t = jnp.float32(temperature)
    return -t * jax.nn.logsumexp(logits.astype(jnp.float32) / t, axis=-1)


def max_prob(logits: jax.Array, temperature: float) -> jax.Array:
    return 1.0 - jnp.max(jax.nn.softmax(logits.astype(jnp.float32) / jnp.float32(temperature), axis=-1), axis=-1)


def scores(logits: np.ndarray, pooled: np.ndarray, stats: Mapping, temperature: float) -> dict[str, np.ndarray]:
    """Every method's score of a set of examples (host numpy in, host numpy out)."""
    logits, pooled = jnp.asarray(logits), jnp.asarray(pooled)
    out = {}
    for method in VIEWS:
        means, precision, normalize = gaussian_for(stats, method)
        out[method] = np.asarray(mahalanobis_score(pooled, jnp.asarray(means, jnp.float32),
                                                   jnp.asarray(precision, jnp.float32), normalize))
    out["energy"] = np.asarray(energy(logits, temperature))
    out["max_prob"] = np.asarray(max_prob(logits, temperature))
    return out


def check_keep(keep: float) -> None:
    """eval.ood_keep is a fraction of validation to keep: (0, 1]."""
    if not 0.0 < keep <= 1.0:
        raise UserError(f"eval.ood_keep must be in (0, 1], got {keep}")


def fit_threshold(in_distribution: np.ndarray, keep: float) -> float:
    """The smallest threshold that keeps (score <= threshold) at least a fraction `keep` of
    the in-distribution (validation) scores: the ceil(keep * n)-th smallest."""
    check_keep(keep)
    ranked = np.sort(in_distribution.astype(np.float64))
    return float(ranked[max(int(np.ceil(keep * len(ranked) - 1e-9)), 1) - 1])


def separation(in_scores: np.ndarray, out_scores: np.ndarray) -> dict:
    """AUROC (OOD as the positive class, higher score = OOD) and the FPR at 95% TPR:
    the share of OOD examples accepted when 95% of the in-distribution ones are."""
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    auroc = float(roc_auc_score(labels, np.r_[in_scores, out_scores]))
    cut = fit_threshold(in_scores, 0.95)
    return {"auroc": auroc, "fpr_at_95_tpr": float(np.mean(out_scores <= cut)), "num_ood": int(len(out_scores))}


def image_files(folder: str) -> list[str]:
    """The inputs `brainjax.data.decode` reads below `folder` (image files, DICOM series,
    NIfTI volumes), sorted."""
    return decode.expand_inputs([folder])


def ood_folders(config: Any) -> list[str]:
    """The eval.ood_dirs that exist; a folder set by the user that is missing or holds no
    image is a UserError (checked before training), the default one is skipped when absent."""
    folders, seen = [], set()
    for folder in tuple(config.eval.ood_dirs):
        key = folder_key(folder)
        if key in seen:
            raise UserError(f"eval.ood_dirs lists {folder} twice; each folder is scored once, under its full path")
        seen.add(key)
        if not os.path.isdir(folder):
            if folder in DEFAULT_DIRS:
                continue
            raise UserError(f"eval.ood_dirs: {folder} is not a folder; give folders of image files from other "
                            "sites or sequences (or eval.ood_dirs=())")
        if not image_files(folder):
            raise UserError(f"eval.ood_dirs: {folder} holds no image files (image files, DICOM or NIfTI)")
        folders.append(folder)
    return folders


def folder_key(folder: str) -> str:
    """The report key of an eval.ood_dirs folder: its full path. Split names never start
    with '/', so a folder can never take a split's place (a folder named 'test' beside the
    test split), and two folders with the same base name stay apart."""
    return os.path.abspath(os.path.expanduser(str(folder)))


def check_config(config: Any) -> None:
    """eval.ood_method, eval.ood_keep and eval.ood_dirs, before training."""
    method = config.eval.ood_method
    if method and method not in METHODS:
        raise UserError(f"eval.ood_method must be one of {METHODS} (or '' for none), got {method!r}")
    check_keep(float(config.eval.ood_keep))
    if not 0.0 <= float(config.eval.ood_shrinkage) <= 1.0:
        raise UserError("eval.ood_shrinkage must be in [0, 1]")
    ood_folders(config)


def summarize(in_scores: Mapping[str, np.ndarray], out_sets: Mapping[str, Mapping[str, np.ndarray]],
              keep: float, chosen: str) -> dict:
    """report["ood"]: per method, the threshold (fitted on validation to keep `keep`) and
    the separation of validation from each OOD set."""
    methods = {}
    for method, val in in_scores.items():
        threshold = fit_threshold(val, keep)
        methods[method] = {"threshold": threshold,
                           "validation_kept": float(np.mean(val <= threshold)),
                           "vs": {name: {**separation(val, sets[method]),
                                         "kept_at_threshold": float(np.mean(sets[method] <= threshold))}
                                  for name, sets in out_sets.items()}}
    return {"method": chosen, "keep": keep, "fitted_on": "validation", "methods": methods}


def readable_images(folder: str, size: int, options: Mapping[str, Any] | None = None) -> list[np.ndarray]:
    """Every slice below `folder` as the model sees it (`decode.model_input`: read as a
    dataset build and predict read it); an unreadable file is skipped with a warning
    (after training, a bad file must not cost the report)."""
    images = []
    for path in image_files(folder):
        try:
            decoded = decode.read(path, **(options or {}))
        except decode.UnreadableImage as err:
            log.warning("eval.ood_dirs: skipping %s", err)
            continue
        images += [decode.model_input(s.pixels, size) for s in decoded.slices]
    return images


def folder_outputs(features_fn: Callable, rvariables: Any, images: Sequence[np.ndarray], batch: int) -> dict:
    """{"logits", "pooled"} of host uint8 images [H, W, 1], on the first local device
    (a few hundred files at most: no sharding)."""
    variables = parallel.unreplicate(rvariables)
    logits, pooled = [], []
    for start in range(0, len(images), batch):
        x = np.stack(images[start:start + batch])
        out_l, out_p = features_fn(variables, steps.to_float_images(jnp.asarray(x)))
        logits.append(np.asarray(out_l, np.float32)), pooled.append(np.asarray(out_p, np.float32))
    return {"logits": np.concatenate(logits), "pooled": np.concatenate(pooled)}


# ---------------------------------------------------------------------------------------
# Evaluation: fit on the training split, threshold on validation, report every method.

OOD_RULES = ("ood", "ood_max_prob")


@dataclasses.dataclass
class OodFns:
    """The compiled functions OOD evaluation needs (built once per run)."""

    num_classes: int
    moments: Callable  # pmapped moments_step
    split_step: Callable  # pmapped eval step -> {"logits", "pooled"} (predict_outputs' contract)
    features: Callable  # jitted (variables, float images) -> (logits, pooled)
    dim_of: Callable  # variables -> pooled feature size


def split_step(variables: Mapping, batch: Mapping[str, jax.Array], rng: jax.Array, level: jax.Array, *,
               model: Any, axis_name: str | None = None) -> dict:
    del rng, level, axis_name
    logits, pooled = logits_and_pooled(model, variables, steps.to_float_images(batch["image"]))
    return {"logits": logits, "pooled": pooled}


def make_ood_fns(model: Any, num_classes: int) -> OodFns:
    features = jax.jit(functools.partial(logits_and_pooled, model))

    def dim_of(variables: Mapping) -> int:
        shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
        _, pooled = jax.eval_shape(features, shapes, jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32))
        return int(pooled.shape[-1])

    return OodFns(num_classes, make_moments_fn(model, num_classes),
                  parallel.compiled_step(functools.partial(split_step, model=model), num_broadcast=2), features, dim_of)


def ood_fns_from_config(config: Any, model: Any, num_classes: int) -> OodFns | None:
    """None when eval.ood_method is '' (no OOD score) or calibration is off."""
    if not config.eval.ood_method or not config.eval.calibration:
        return None
    return make_ood_fns(model, num_classes)


def _rule_rows(test: Mapping, test_scores: np.ndarray, temperature: float, threshold: float,
               max_prob_threshold: float, val_scores: np.ndarray, val_max_prob: np.ndarray) -> dict:
    """report["selective"]["rules"] rows of the OOD rules on the test split. `ood` keeps
    a prediction when its OOD score is at most the threshold; `ood_max_prob` also needs
    max_prob's threshold. For the risk-coverage ranking, ood_max_prob ranks by the
    smaller of the two margins, each in units of its validation spread."""
    from brainjax.evaluators import calibration

    probs = calibration.softmax(test["logits"], temperature)
    correct = probs.argmax(-1) == test["label"]
    top = probs.max(-1)
    combined = np.minimum((top - max_prob_threshold) / max(float(val_max_prob.std()), 1e-12),
                          (threshold - test_scores) / max(float(val_scores.std()), 1e-12))
    rows = {}
    for rule, score, cut, thresholds in (("ood", -test_scores, -threshold, threshold),
                                         ("ood_max_prob", combined, 0.0,
                                          {"ood": threshold, "max_prob": max_prob_threshold})):
        rows[rule] = {"threshold": thresholds, "clean": calibration.selective_cell(score, correct, cut),
                      "degraded_mean": {}, "curves": {"clean": calibration.curve_points(score, correct)}}
    return rows


def histogram(in_scores: np.ndarray, out_sets: Mapping[str, np.ndarray], bins: int = 40) -> dict:
    """Counts of the chosen score per set on shared bins (what ood.png plots)."""
    every = np.concatenate([in_scores, *out_sets.values()]).astype(np.float64)
    hi = float(np.quantile(every, 0.99)) if len(every) else 1.0
    edges = np.linspace(float(every.min()), max(hi, float(every.min()) + 1e-6), bins + 1)
    count = lambda v: np.histogram(np.clip(v, edges[0], edges[-1]), edges)[0].tolist()
    return {"edges": edges.tolist(), "validation": count(in_scores), **{k: count(v) for k, v in out_sets.items()}}


def evaluate_ood(config: Any, fns: OodFns, rvariables: Any, pipeline: Any, rng: jax.Array, temperature: float,
                 max_prob_threshold: float) -> tuple[dict, dict, dict]:
    """(report["ood"], the OOD rules' selective rows on the test split, the Gaussian
    statistics). Validation is the in-distribution set; the test split and every
    eval.ood_dirs folder are scored against it."""
    from brainjax.evaluators.predict import predict_outputs

    method, keep = config.eval.ood_method, float(config.eval.ood_keep)
    variables_shape = parallel.replica_shapes(rvariables)
    stats = fit_gaussian(fns.moments, rvariables, lambda: pipeline.eval_batches(config.train_split),
                         fns.num_classes, fns.dim_of(variables_shape), float(config.eval.ood_shrinkage))
    held_out = (("holdout", "holdout"),) if config.holdout_source else ()  # the held-out source's split
    split_outputs = {name: predict_outputs(fns.split_step, rvariables, pipeline.eval_batches(split), rng)
                     for name, split in (("validation", config.val_split), ("test", config.test_split), *held_out)}
    val = scores(split_outputs["validation"]["logits"], split_outputs["validation"]["pooled"], stats, temperature)
    out_sets = {config.test_split: scores(split_outputs["test"]["logits"], split_outputs["test"]["pooled"], stats,
                                          temperature)}
    if held_out:
        out_sets["holdout"] = scores(split_outputs["holdout"]["logits"], split_outputs["holdout"]["pooled"], stats,
                                     temperature)
    for folder in ood_folders(config):
        images = readable_images(folder, int(config.image_size),
                                 {"slice_axis": str(config.slice_axis),
                                  "min_foreground": float(config.volume_min_foreground)})
        if not images:
            log.warning("eval.ood_dirs: no readable image in %s; not scored", folder)
            continue
        out = folder_outputs(fns.features, rvariables, images, int(config.eval_batch_size))
        out_sets[folder_key(folder)] = scores(out["logits"], out["pooled"], stats, temperature)
    section = summarize(val, out_sets, keep, method)
    section["statistics"] = {"fitted_on": config.train_split, "examples": int(stats["counts"].sum()),
                             "feature_dim": int(stats["means"].shape[1]), "shrinkage": float(stats["shrinkage"])}
    section["threshold"] = section["methods"][method]["threshold"]
    section["histogram"] = histogram(val[method], {k: v[method] for k, v in out_sets.items()})
    val_top = calibration_top(split_outputs["validation"]["logits"], temperature)
    rows = _rule_rows(split_outputs["test"], out_sets[config.test_split][method], temperature, section["threshold"],
                      max_prob_threshold, val[method], val_top)
    for name, entry in section["methods"].items():
        log.info("OOD %s: threshold %.4g keeps %.1f%% of validation; %s", name, entry["threshold"],
                 100 * entry["validation_kept"],
                 ", ".join(f"{k} AUROC {v['auroc']:.3f} (kept {100 * v['kept_at_threshold']:.0f}%)"
                           for k, v in entry["vs"].items()))
    return section, rows, stats


def calibration_top(logits: np.ndarray, temperature: float) -> np.ndarray:
    from brainjax.evaluators import calibration

    return calibration.softmax(logits, temperature).max(-1)


class Evaluator:
    """report["ood"]: the out-of-distribution scores, fitted on the training split and
    thresholded on validation, against the test split and every eval.ood_dirs folder.
    Needs `calibration`'s temperature and max_prob threshold; hands its rules' rows on the
    test split to `selective` and its Gaussian statistics (ood_stats.npz) to the report
    writer (`context.shared`)."""

    def check(self, config: Any) -> None:
        check_config(config)

    def plot(self, section: dict, outdir: str) -> None:
        plots.plot_ood(section, os.path.join(outdir, "ood.png"))

    def run(self, context: Any) -> dict | None:
        sel = context.shared.get("selective")
        if context.ood_fns is None or "calibration" not in context.results or sel is None:
            return None
        section, rows, stats = evaluate_ood(context.config, context.ood_fns, context.rvariables, context.pipeline,
                                            context.rng, context.results["calibration"]["temperature"],
                                            sel["rules"]["max_prob"]["threshold"])
        context.shared["ood_rows"], context.shared["ood_stats"] = rows, stats
        return section
