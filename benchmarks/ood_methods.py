"""OOD scores beyond the engine's (evaluators/ood.py), tried on a trained run: which
feature space separates validation from test_dedup and other_sequences (issue 24,
BUILD_NOTES). Read-only on the run; prints one row per method:

  AUROC of validation vs other_sequences (and per source), vs the test split, and at the
  threshold keeping 90% of validation: the share of the test split kept and its accuracy.

Methods: a class-conditional Gaussian (shared covariance shrunk by 0.1, fitted on the
training split) on (a) the channel means, (b) channel means and standard deviations,
(c) the Gram matrix (signed square root, upper triangle) of every backbone stage output,
(d) a 4x4 spatial pooling of a stage; the sum of the per-layer (b) scores, each
standardised by its training-split scores; kNN (k-th cosine similarity to the training
bank) on pooled features; and the engine's pooled-feature Mahalanobis (raw, L2).
Also: the relative Mahalanobis distance (Ren et al. 2021: the class
distance minus that of one Gaussian over all classes) on pooled L2 and on each Gram
space; ViM (Wang et al. 2022) and its residual alone on the penultimate features; the
penultimate L2 Mahalanobis; and the max of the pooled L2 score and one low-level score,
each standardised by its training-split scores.

  python benchmarks/ood_methods.py --workdir=/tmp/runs/sj [--ood_dir=../shared/data/other_sequences]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax
import jax.numpy as jnp
import numpy as np

from brainjax import inference, steps, train
from brainjax.evaluators import ood


def feature_fn(model, variables):
    @jax.jit
    def feats(x):
        logits, st = model.apply(variables, x, train=False, capture_intermediates=True, mutable=["intermediates"])
        inter = st["intermediates"]
        res = {"logits": logits, "pooled": inter["pooled"][-1]}
        head = inter.get("head", {})
        if "dense_0" in head:  # the penultimate features (input of the logits layer), for ViM
            res["penult"] = jax.nn.relu(head[sorted(k for k in head if k.startswith("dense_"))[-1]]["__call__"][0])
        for name, sub in sorted(inter["backbone"].items()):
            if not isinstance(sub, dict) or "__call__" not in sub:
                continue
            v = sub["__call__"][0].astype(jnp.float32)
            n, h, w, c = v.shape
            res[f"{name}/mean"], res[f"{name}/std"] = v.mean((1, 2)), v.std((1, 2))
            if c <= 32:
                g = jnp.einsum("nhwc,nhwd->ncd", v, v) / (h * w)
                iu = jnp.triu_indices(c)
                res[f"{name}/gram"] = jnp.sign(g[:, iu[0], iu[1]]) * jnp.sqrt(jnp.abs(g[:, iu[0], iu[1]]))
            res[f"{name}/sp4"] = jax.image.resize(v, (n, 4, 4, c), "linear", antialias=True).reshape(n, -1)
        return res
    return feats


def outputs(feats, images, batch=64):
    acc = {}
    for i in range(0, len(images), batch):
        r = jax.device_get(feats(steps.to_float_images(jnp.asarray(images[i:i + batch]))))
        for k, v in r.items():
            acc.setdefault(k, []).append(np.asarray(v, np.float64))
    return {k: np.concatenate(v) for k, v in acc.items()}


def split_images(pipeline, split):
    imgs, labels = [], []
    for b in pipeline.eval_batches(split):
        m = np.asarray(b["mask"]).reshape(-1).astype(bool)
        imgs.append(np.asarray(b["image"]).reshape((-1,) + b["image"].shape[-3:])[m])
        labels.append(np.asarray(b["label"]).reshape(-1)[m])
    return np.concatenate(imgs), np.concatenate(labels)


def gaussian(x, y, k, shrink=0.1):
    """The engine's class-conditional Gaussian (shared, shrunk covariance) on features `x`."""
    counts = np.array([(y == c).sum() for c in range(k)], np.float64)
    mus = np.stack([x[y == c].mean(0) if counts[c] else np.zeros(x.shape[1]) for c in range(k)])
    scatter = sum((x[y == c] - mus[c]).T @ (x[y == c] - mus[c]) for c in range(k))
    prec = ood.gaussian_from_moments(mus, scatter, counts, shrink)["precision"]
    return lambda z: np.min(np.einsum("nkd,de,nke->nk", z[:, None] - mus[None], prec, z[:, None] - mus[None]), 1)


def background_gaussian(x, shrink=0.1):
    """One Gaussian for all classes: the background of the relative Mahalanobis distance."""
    return gaussian(x, np.zeros(len(x), int), 1, shrink)


def vim(train_x, w, b, dim):
    """ViM (Wang et al. 2022): the norm of the feature outside the top-`dim` principal
    subspace of training features (centred at -pinv(W^T) b), scaled to the logits' size,
    minus the energy; higher = more out of distribution."""
    u = -np.linalg.pinv(w.T) @ b
    xc = train_x - u
    _, vecs = np.linalg.eigh(xc.T @ xc / len(xc))
    ns = vecs[:, :-dim] if dim < xc.shape[1] else np.zeros((xc.shape[1], 0))
    resid = lambda x: np.linalg.norm((x - u) @ ns, axis=1)
    alpha = np.mean((train_x @ w + b).max(1)) / max(np.mean(resid(train_x)), 1e-12)

    def energy(x):  # logsumexp of the logits
        z = x @ w + b
        top = z.max(1)
        return top + np.log(np.exp(z - top[:, None]).sum(1))
    return lambda x: alpha * resid(x) - energy(x), resid


def l2(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--ood_dir", default="../shared/data/other_sequences")
    args = ap.parse_args()
    from sklearn.metrics import roc_auc_score

    config = inference.load_run_config(args.workdir)
    pipeline = train.input_pipeline(config)
    model, variables = inference.restore_for_inference(config, args.workdir, pipeline.num_classes)
    feats = feature_fn(model, variables)
    sets = {}
    for name, split in (("train", config.train_split), ("val", config.val_split), ("test", config.test_split)):
        images, labels = split_images(pipeline, split)
        sets[name] = {**outputs(feats, images), "label": labels}
    files = ood.image_files(args.ood_dir)
    sets["ood"] = outputs(feats, np.stack(ood.readable_images(args.ood_dir, config.image_size)))
    source = np.array([os.path.basename(p).split("_")[0] for p in files])
    tr, va, te, ot = (sets[k] for k in ("train", "val", "test", "ood"))
    k = pipeline.num_classes
    correct = te["logits"].argmax(1) == te["label"]
    auroc = lambda a, b: roc_auc_score(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b])
    print(f"{args.workdir}: validation accuracy {np.mean(va['logits'].argmax(1) == va['label']):.3f}, "
          f"{config.test_split} accuracy {correct.mean():.3f} ({len(correct)}), {len(files)} OOD files")
    print(f"{'method':34s} {'AUROC ood':>9s} {'test':>6s} | at 90% val kept: test kept, its accuracy | per source")

    def row(name, score):
        sv, st, so = score(va), score(te), score(ot)
        cut = np.sort(sv)[int(np.ceil(0.9 * len(sv))) - 1]
        kept = st <= cut
        per = " ".join(f"{s} {auroc(sv, so[source == s]):.3f}" for s in np.unique(source))
        print(f"{name:34s} {auroc(sv, so):9.3f} {auroc(sv, st):6.3f} | {kept.mean():.2f}, "
              f"{correct[kept].mean() if kept.any() else float('nan'):.2f} | {per}", flush=True)

    def on(keys):
        return lambda d: np.concatenate([d[key] for key in keys], 1)

    layers = sorted({key.split("/")[0] for key in tr if "/" in key})
    for layer in layers:
        for kind, keys in (("mean", [f"{layer}/mean"]), ("mean+std", [f"{layer}/mean", f"{layer}/std"]),
                           ("gram", [f"{layer}/gram"]), ("sp4", [f"{layer}/sp4"])):
            if all(key in tr for key in keys):
                f = on(keys)
                g = gaussian(f(tr), tr["label"], k)
                row(f"{layer} {kind}", lambda d, g=g, f=f: g(f(d)))
    parts = []
    for layer in layers:
        f = on([f"{layer}/mean", f"{layer}/std"])
        g = gaussian(f(tr), tr["label"], k)
        s = g(f(tr))
        parts.append((g, f, s.mean(), s.std()))
    row("sum over layers, mean+std", lambda d: sum((g(f(d)) - m) / s for g, f, m, s in parts))
    for name, view in (("pooled (engine mahalanobis)", lambda x: x), ("pooled L2 (mahalanobis_l2)", l2)):
        g = gaussian(view(tr["pooled"]), tr["label"], k)
        row(name, lambda d, g=g, view=view: g(view(d["pooled"])))
    # Relative Mahalanobis (Ren et al. 2021): class distance minus a class-agnostic one.
    grams = [key for key in sorted(tr) if key.endswith("/gram")]
    for key, view in [("pooled", l2)] + [(key, lambda x: x) for key in grams]:
        g, bg = gaussian(view(tr[key]), tr["label"], k), background_gaussian(view(tr[key]))
        row(f"relative MD {key}", lambda d, g=g, bg=bg, view=view, key=key: g(view(d[key])) - bg(view(d[key])))
    # ViM on the penultimate features with the logits layer's weights.
    if "penult" in tr:
        w = np.asarray(variables["params"]["head"]["logits"]["kernel"], np.float64)
        b = np.asarray(variables["params"]["head"]["logits"]["bias"], np.float64)
        for dim in (16, 32, 64):
            if dim < tr["penult"].shape[1]:
                score, resid = vim(tr["penult"], w, b, dim)
                row(f"ViM penultimate D={dim}", lambda d, score=score: score(d["penult"]))
                row(f"  residual only D={dim}", lambda d, resid=resid: resid(d["penult"]))
        g = gaussian(l2(tr["penult"]), tr["label"], k)
        row("penultimate L2 mahalanobis", lambda d, g=g: g(l2(d["penult"])))
    # Max of scores, each standardised by its training-split scores: a low-level space
    # (sees other scanners) with the pooled one (sees test_dedup).
    def standardised(g, f):
        s = g(f(tr))
        return lambda d: (g(f(d)) - s.mean()) / s.std()
    pooled_l2 = standardised(gaussian(l2(tr["pooled"]), tr["label"], k), lambda d: l2(d["pooled"]))
    for layer in layers:
        for kind, keys in (("mean+std", [f"{layer}/mean", f"{layer}/std"]), ("gram", [f"{layer}/gram"])):
            if all(key in tr for key in keys):
                f = on(keys)
                low = standardised(gaussian(f(tr), tr["label"], k), f)
                row(f"max(pooled L2, {layer} {kind})", lambda d, low=low: np.maximum(pooled_l2(d), low(d)))
    bank = l2(tr["pooled"])
    for n in (1, 10, 50):
        row(f"kNN k={n} pooled", lambda d, n=n: -np.sort(l2(d["pooled"]) @ bank.T, axis=1)[:, -n])


if __name__ == "__main__":
    main()
