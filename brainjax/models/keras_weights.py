"""Keras ImageNet weights -> Flax variables, as a separate step (never inside a Module).

  read_keras_weights(path)    -> {keras layer name: [arrays in the file's weight order]}
                                 (legacy h5, Keras 3 .weights.h5, .keras zip)
  keras_layers(arch, vars)    -> the Flax backbone's Keras layers: name -> [(collection, path, shape)]
  convert(...) / merge(...)   -> new variables; any missing/extra layer or shape mismatch
                                 fails with one message naming the layer, the file and both shapes
  locate(arch, weights, dir)  -> a verified file for 'imagenet' (weights dir, Keras cache, then
                                 the official URL with its md5, like keras.utils.get_file)
  backbone_variables(module, arch, weights) -> variables of a backbone (brainjax.models.pretrained)

Weight order per Keras layer type: Conv2D [kernel, bias?]; BatchNormalization [gamma,
beta, moving_mean, moving_variance]. The names inside the file are not used: the
published VGG files call them e.g. `block1_conv1_W_1:0`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import urllib.request
import zipfile
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from brainjax import files
from brainjax.errors import UserError

_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"
OFFICIAL: Mapping[str, tuple[str, str, str]] = {  # arch: (file name, url, md5)
    "vgg16": ("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
              _BASE + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "6d6bbae143d832006294945121d1f1fc"),
    "vgg19": ("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
              _BASE + "vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", "253f8cb515780f3b799900260a226db6"),
    "resnet50v2": ("resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
                   _BASE + "resnet/resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
                   "fac2f116257151a9d068a22e544a4917"),
}
KERAS_CACHE = os.path.join(os.path.expanduser("~"), ".keras", "models")
_BN_PARTS = (("params", "scale"), ("params", "bias"), ("batch_stats", "mean"), ("batch_stats", "var"))


# ----------------------------------------------------------------------------- reading


def _decode(x: Any) -> str:
    return x.decode("utf8") if isinstance(x, bytes) else str(x)


def _chunked_attr(attrs, name: str) -> list[str]:
    """Keras splits long attributes into name0, name1, ... (HDF5 header limit)."""
    if name in attrs:
        return [_decode(x) for x in attrs[name]]
    out, i = [], 0
    while f"{name}{i}" in attrs:
        out.extend(_decode(x) for x in attrs[f"{name}{i}"])
        i += 1
    return out


def _read_legacy(f, path: str) -> dict[str, list[np.ndarray]]:
    group = f["model_weights"] if "model_weights" in f and "layer_names" not in f.attrs else f
    names = _chunked_attr(group.attrs, "layer_names")
    out = {}
    for name in names:
        if name not in group:
            raise UserError(f"{path}: layer {name!r} listed in layer_names has no group; the file is damaged")
        g = group[name]
        out[name] = [np.asarray(g[w]) for w in _chunked_attr(g.attrs, "weight_names")]
    return out


_K3_CLASS = {"conv2d": "Conv2D", "batch_normalization": "BatchNormalization", "dense": "Dense"}


def _read_keras3(f, path: str, layer_order: list[tuple[str, str]] | None) -> dict[str, list[np.ndarray]]:
    """Keras 3 layout: layers/<auto name>/vars/<i>. Auto names are per-class counters in
    model.layers order (conv2d, conv2d_1, ...); `layer_order` [(name, class)] maps them back."""
    groups = f["layers"]
    by_class: dict[str, list[tuple[int, list[np.ndarray]]]] = {}
    for auto in groups:
        arrays = [np.asarray(groups[auto]["vars"][k]) for k in sorted(groups[auto]["vars"], key=int)] \
            if "vars" in groups[auto] else []
        if not arrays:
            continue
        m = re.fullmatch(r"(.*?)(?:_(\d+))?", auto)
        by_class.setdefault(m.group(1), []).append((int(m.group(2) or 0), arrays))
    if layer_order is None:
        raise UserError(f"{path}: a Keras 3 weights file names layers by class only; load it through "
                        "`pretrained(arch, ...)` so the architecture's layer order can be applied")
    out: dict[str, list[np.ndarray]] = {}
    for auto_class, items in by_class.items():
        cls = _K3_CLASS.get(auto_class, auto_class)
        names = [n for n, c in layer_order if c == cls]
        items.sort(key=lambda t: t[0])
        if len(items) != len(names):
            raise UserError(f"{path}: has {len(items)} {cls} layers with weights, the model has {len(names)}; "
                            "is it a file for another architecture?")
        out.update({name: arrays for name, (_, arrays) in zip(names, items)})
    return out


def read_keras_weights(path: str, layer_order: list[tuple[str, str]] | None = None) -> dict[str, list[np.ndarray]]:
    """{keras layer name: weights in file order} from a legacy .h5, .weights.h5 or .keras file."""
    import h5py

    if not os.path.isfile(path):
        raise UserError(f"weights file {path} does not exist")
    try:
        if zipfile.is_zipfile(path):  # .keras
            with zipfile.ZipFile(path) as z:
                config = json.loads(z.read("config.json"))
                order = [(l["config"]["name"], l["class_name"]) for l in config["config"]["layers"]]
                with h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as f:
                    return _read_keras3(f, path, order)
        with h5py.File(path, "r") as f:
            if "layers" in f and "layer_names" not in f.attrs and "model_weights" not in f:
                return _read_keras3(f, path, layer_order)
            return _read_legacy(f, path)
    except UserError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise UserError(f"{path}: not a readable Keras weights file ({type(err).__name__}: {err}); "
                        "it may be truncated: download it again") from None


# ----------------------------------------------------------------------------- mapping


def keras_layers(backbone_vars: Mapping[str, Any]) -> dict[str, list[tuple[str, tuple[str, ...], tuple]]]:
    """Keras layer name -> [(collection, flax path, shape)] in Keras weight order, in
    creation order (= Keras layer order). Flax `conv2_block1/preact_bn` is Keras
    `conv2_block1_preact_bn`."""
    flat = {col: traverse_util.flatten_dict(dict(tree)) for col, tree in backbone_vars.items()}
    params = flat["params"]
    layers: dict[str, list] = {}
    for path in params:
        module = path[:-1]
        name = "_".join(module)
        if name in layers:
            continue
        if module + ("scale",) in params:  # BatchNorm: gamma, beta, moving mean, moving variance
            layers[name] = [(col, module + (leaf,), np.shape(flat[col][module + (leaf,)])) for col, leaf in _BN_PARTS]
        else:  # Conv / Dense: kernel, optional bias
            layers[name] = [("params", module + (leaf,), np.shape(params[module + (leaf,)]))
                            for leaf in ("kernel", "bias") if module + (leaf,) in params]
    return layers


# Order of a ResNetV2 block's layers in Keras `model.layers` (topological, by depth).
_RESNET_BLOCK_ORDER = ("preact_bn", "1_conv", "1_bn", "2_conv", "2_bn", "0_conv", "3_conv")


def _keras_sort_key(name: str) -> tuple:
    if m := re.fullmatch(r"block(\d+)_conv(\d+)", name):  # VGG
        return (1, int(m.group(1)), int(m.group(2)))
    if m := re.fullmatch(r"conv(\d+)_block(\d+)_(.+)", name):  # ResNetV2
        return (1, int(m.group(1)), int(m.group(2)), _RESNET_BLOCK_ORDER.index(m.group(3)))
    return {"conv1_conv": (0,), "post_bn": (2,)}.get(name, (3, name))


def keras_layer_order(backbone_vars: Mapping[str, Any]) -> list[tuple[str, str]]:
    """[(layer name, Keras class)] of the layers with weights, in Keras `model.layers`
    order: what Keras 3 weight files' per-class auto names (conv2d, conv2d_1, ...) count."""
    layers = keras_layers(backbone_vars)
    return [(name, "BatchNormalization" if layers[name][-1][1][-1] == "var" else "Conv2D")
            for name in sorted(layers, key=_keras_sort_key)]


def merge(backbone_vars: Mapping[str, Any], weights: Mapping[str, list[np.ndarray]], source: str) -> dict:
    """Variables like `backbone_vars` with every leaf taken from `weights`.

    Fails with one message listing every missing layer, extra layer and shape mismatch.
    """
    expected = keras_layers(backbone_vars)
    file_layers = {k: v for k, v in weights.items() if len(v)}
    problems = []
    missing = [n for n in expected if n not in file_layers]
    extra = [n for n in file_layers if n not in expected]
    if missing:
        problems.append(f"layers missing from the file: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if extra:
        problems.append(f"layers in the file that the model lacks: {extra[:8]}{' ...' if len(extra) > 8 else ''}")
    flat = {col: traverse_util.flatten_dict(dict(backbone_vars[col])) for col in backbone_vars}
    for name, parts in expected.items():
        if name not in file_layers:
            continue
        arrays = file_layers[name]
        if len(arrays) != len(parts):
            problems.append(f"layer {name}: file has {len(arrays)} weights, model expects {len(parts)}")
            continue
        for (col, path, shape), array in zip(parts, arrays):
            if tuple(array.shape) != tuple(shape):
                problems.append(f"layer {name} ({path[-1]}): file shape {tuple(array.shape)}, model shape {tuple(shape)}")
            else:
                flat[col][path] = np.asarray(array, np.float32)
    if problems:
        raise UserError(f"weights file {source} does not fit this model:\n  " + "\n  ".join(problems[:12]))
    return {col: traverse_util.unflatten_dict(v) for col, v in flat.items()}


# ----------------------------------------------------------------------------- files


def md5(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, timeout: float):
    """`url`'s bytes, 1 MiB at a time."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        while chunk := r.read(1 << 20):
            yield chunk


def _instructions(arch: str, dirs: list[str]) -> str:
    name, url, digest = OFFICIAL[arch]
    return (f"ImageNet weights for {arch} not found: looked for {name} in {dirs}, and could not download {url}.\n"
            f"Download it on a machine with internet (md5 {digest}) and put it in {dirs[0]} "
            f"(or set config.model.weights=/path/to/{name}, or config.model.weights=none to train from scratch).")


def locate(arch: str, weights: str, weights_dir: str | None = None, download: bool = True, timeout: float = 5.0) -> str:
    """Path of the weights file for `weights` ('imagenet' or a path); verifies md5 of official names."""
    if arch not in OFFICIAL:
        raise UserError(f"no published Keras weights for backbone {arch!r}; use one of {sorted(OFFICIAL)} "
                        "or config.model.weights=none")
    name, url, digest = OFFICIAL[arch]
    if weights != "imagenet":
        path = os.path.expanduser(weights)
        if not os.path.isfile(path):
            raise UserError(f"weights file {path} does not exist (config.model.weights); "
                            f"the official {arch} file is {name}, from {url}")
        if os.path.basename(path) == name:
            _verify(path, digest, url)
        return path
    dirs = [d for d in (weights_dir, os.environ.get("BRAINJAX_WEIGHTS_DIR"), KERAS_CACHE) if d]
    for d in dirs:
        path = os.path.join(os.path.expanduser(d), name)
        if os.path.isfile(path):
            _verify(path, digest, url)
            return path
    if download:
        target = os.path.join(os.path.expanduser(dirs[0]), name)
        try:
            files.write_chunks(target, _download(url, timeout))
            _verify(target, digest, url)
            return target
        except (OSError, ValueError) as err:
            raise UserError(_instructions(arch, dirs) + f"\n(download failed: {err})") from None
    raise UserError(_instructions(arch, dirs))


def _verify(path: str, digest: str, url: str) -> None:
    got = md5(path)
    if got != digest:
        raise UserError(f"{path}: md5 {got} does not match the official {digest}; the file is damaged or not "
                        f"the published one. Download it again from {url}")


# ----------------------------------------------------------------------------- API


def load_into(arch: str, weights: str, variables: Mapping[str, Any], weights_dir: str | None = None) -> dict:
    """Classifier variables with the backbone replaced by the Keras weights."""
    path = locate(arch, weights, weights_dir)
    backbone = {col: variables[col]["backbone"] for col in variables if "backbone" in variables[col]}
    loaded = merge(backbone, read_keras_weights(path, keras_layer_order(backbone)), path)
    out = {col: dict(v) for col, v in variables.items()}
    for col, tree in loaded.items():
        out[col]["backbone"] = tree
    return out


def backbone_variables(module: Any, arch: str, weights: str = "imagenet", weights_dir: str | None = None) -> dict:
    """Variables of backbone `module` (architecture `arch`) filled from a Keras weight
    file; every key and shape checked (`merge`). `brainjax.models.pretrained` builds the
    module and calls this."""
    import jax
    import jax.numpy as jnp

    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), dict(shapes))
    path = locate(arch, weights, weights_dir)
    return merge(template, read_keras_weights(path, keras_layer_order(template)), path)
