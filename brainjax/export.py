"""Export a trained model so it runs without JAX: ONNX, TF SavedModel or TFLite.

  python -m brainjax.export --workdir=W --format=onnx|savedmodel|tflite [--out=PATH]

The exported function is `inference.serving_fn` of the best checkpoint, the very function
--mode=predict runs, preprocessing included:
  images         uint8 [N, H, W, 1] (grayscale; H = W = the run's image_size; N dynamic)
  probabilities  float32 [N, num_classes]: softmax(logits / T) with the temperature T
                 fitted at evaluation folded in, in the order of the sidecar's class_names
  quality        float32 [N], the scan-quality estimate (only for a model with a quality head)
(float conversion, the model's intensity standardisation, channel replication, the
backbone's Keras preprocessing and softmax are in the graph, so a consumer feeds plain
pixels). The model is built from the run's config.json. A sidecar `<out>.json` carries the
class names as the run saved them, the input size, the standardisation, the temperature,
the abstention rule and threshold (abstain where max probability, times quality for rule
'quality', is below it: exactly --mode=predict's ABSTAIN), the brainjax version, a hash of
the run's config and its headline figures.

Converters (see BUILD_NOTES "Export"): ONNX with jax2onnx (straight from the jaxpr);
SavedModel with jax.experimental.jax2tf (native serialization) under a tf.function with
the named uint8 signature; TFLite from the JAX function with TF ops allowed where the
builtin set has none. The converters are optional dependencies: nothing here is imported
by `import brainjax`, and each is imported only for its format.

Nothing is half-written and nothing is lost: every format is written to a temporary
folder beside the output and renamed into place at the end (files.replace_path). An
existing --out (or its sidecar) is an error, unless --overwrite is given and it is a
previous export (recognised by its sidecar); an --out that is the run folder, its
checkpoints, config or reports is refused. Bad input is one clear error, before the
slow part.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections

import brainjax
from brainjax import abstention, files, inference, preflight, schema
from brainjax.errors import UserError, missing_extra

log = logging.getLogger("brainjax")

FORMATS = {"onnx": ".onnx", "savedmodel": "", "tflite": ".tflite"}
INPUT_NAME = "images"
OUTPUT_NAME = inference.OUTPUT_NAMES[0]  # "probabilities"


def output_names(model: Any, has_ood: bool = False) -> tuple[str, ...]:
    """The graph's outputs, in order: probabilities, then quality with a quality head,
    then ood_score when the run has an OOD rule (calibration.json's "ood")."""
    return tuple(n for n in inference.OUTPUT_NAMES
                 if n == "probabilities" or (n == "quality" and model.quality_head is not None)
                 or (n == "ood_score" and has_ood))


def graph_fn(model: Any, variables: dict, temperature: float, ood: dict | None = None) -> Callable[[jax.Array], tuple]:
    """`inference.serving_fn` with its outputs as a tuple in `output_names` order."""
    serve, names = inference.serving_fn(model, variables, temperature, ood), output_names(model, ood is not None)
    return lambda images: tuple(serve(images)[name] for name in names)


def export_onnx(fn: Callable, size: int, path: str, names: Sequence[str]) -> None:
    """ONNX via jax2onnx, dynamic batch 'N', input 'images' (uint8), outputs `names`."""
    import onnx
    from jax2onnx import to_onnx

    model = to_onnx(fn, [jax.ShapeDtypeStruct(("N", size, size, 1), jnp.uint8)], model_name="brainjax")
    model = model if isinstance(model, onnx.ModelProto) else onnx.load_from_string(model.SerializeToString())
    _rename_io(model, names)
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _rename_io(model: Any, names: Sequence[str]) -> None:
    """Names the graph input 'images' and the outputs `names` (and their uses)."""
    graph = model.graph
    if len(graph.output) != len(names):
        raise RuntimeError(f"the ONNX graph has {len(graph.output)} outputs, expected {list(names)}")
    renames = {graph.input[0].name: INPUT_NAME, **{out.name: name for out, name in zip(graph.output, names)}}
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.name in renames:
            value.name = renames[value.name]
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]


def _tf_module(fn: Callable, size: int, names: Sequence[str]) -> Any:
    import tensorflow as tf
    from jax.experimental import jax2tf

    converted = jax2tf.convert(fn, polymorphic_shapes=[f"(n, {size}, {size}, 1)"], with_gradient=False)
    module = tf.Module()
    module.serve = tf.function(lambda images: dict(zip(names, converted(images))), autograph=False,
                               input_signature=[tf.TensorSpec([None, size, size, 1], tf.uint8, name=INPUT_NAME)])
    return module


def export_savedmodel(fn: Callable, size: int, path: str, names: Sequence[str]) -> None:
    """TF SavedModel with the 'serving_default' signature images -> {names}."""
    import tensorflow as tf

    module = _tf_module(fn, size, names)
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})


def export_tflite(fn: Callable, size: int, path: str, names: Sequence[str]) -> None:
    """TFLite from the jax2tf concrete function (TF select ops allowed where needed);
    its 'serving_default' signature runner returns the outputs by name."""
    import tensorflow as tf

    module = _tf_module(fn, size, names)
    concrete = module.serve.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    files.write_bytes(path, converter.convert())


EXPORTERS = {"onnx": export_onnx, "savedmodel": export_savedmodel, "tflite": export_tflite}


def sidecar(config: ml_collections.ConfigDict, workdir: str, fmt: str, class_names: Sequence[str],
            names: Sequence[str], calibration: dict | None) -> dict:
    """What a consumer needs besides the file: classes, input, preprocessing, the
    temperature and abstention rule predict uses, provenance."""
    with open(os.path.join(workdir, inference.RUN_CONFIG_FILE), "rb") as f:
        config_hash = hashlib.sha256(f.read()).hexdigest()[:16]
    temperature = schema.temperature(calibration)
    size = int(config.image_size)
    shapes = {"probabilities": ["N", len(class_names)], "quality": ["N"], "ood_score": ["N"]}
    standardize = str(config.model.standardize)
    out = {"format": fmt, "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["N", size, size, 1]},
           "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": shapes[OUTPUT_NAME]},
           "outputs": [{"name": n, "dtype": "float32", "shape": shapes[n]} for n in names],
           "class_names": list(class_names), "image_size": size,
           "standardize": {"method": standardize,
                           **({"percentiles": list(config.model.standardize_percentiles)}
                              if standardize == "percentile" else {})},
           "preprocessing": (f"in the graph: uint8 -> float / 255 -> per-image standardisation ({standardize}) -> "
                             f"the {config.model.backbone} backbone; softmax(logits / temperature) with temperature "
                             f"{temperature}. Feed grayscale pixels resized to {size}x{size} (bilinear, antialiased) "
                             "as uint8."),
           "temperature": temperature,
           "abstention": None if calibration is None else abstention_entry(calibration),
           "backbone": config.model.backbone, "brainjax_version": brainjax.__version__,
           "config_sha256": config_hash}
    report = os.path.join(workdir, "report.json")
    if os.path.isfile(report):
        out["report"] = schema.headline(schema.read_report(report), report)
    return out


report_summary = schema.headline  # the sidecar's headline figures (brainjax/schema.py)


abstention_entry = abstention.sidecar_entry  # the sidecar's entry (brainjax/abstention.py)


def is_previous_export(path: str) -> bool:
    """An earlier export: `path` with its sidecar `<path>.json` naming a format."""
    return files.json_with_keys("format", "brainjax_version")(path + ".json") and \
        files.read_json(path + ".json", "an export sidecar")["format"] in FORMATS


def check_target(workdir: str, out: str, overwrite: bool, parent_made_here: bool = False) -> None:
    """Before any work: `out` and `<out>.json` are new, or (with --overwrite) a previous
    export; never the run's own folder, checkpoints, config or reports.
    `parent_made_here`: the default <workdir>/export/, which export creates."""
    run = os.path.realpath(workdir)
    for path in (out, out + ".json"):
        real = os.path.realpath(path)
        if real == run or run.startswith(real.rstrip(os.sep) + os.sep):
            raise UserError(f"--out={out}: {path} is the run folder {workdir} or holds it; export beside it or "
                            "into <workdir>/export/")
        if real.startswith(os.path.join(run, "checkpoints") + os.sep) or real == os.path.join(run, "checkpoints"):
            raise UserError(f"--out={out} is inside the run's checkpoints; choose another path")
        if os.path.dirname(real) == run and os.path.basename(real) in RUN_FILES:
            raise UserError(f"--out={out}: {path} is the run's {os.path.basename(real)}; choose another path")
    existing = [p for p in (out, out + ".json") if os.path.lexists(p)]
    if existing and not overwrite:
        raise UserError(f"--out={out}: {existing[0]} exists; brainjax never overwrites it (pass --overwrite to "
                        "replace a previous export, recognised by its sidecar, or choose another --out)")
    if existing and not is_previous_export(out):
        raise UserError(f"--out={out}: {existing[0]} exists and is not a brainjax export (no sidecar {out}.json "
                        "naming a format); --overwrite replaces only previous exports: choose another --out")
    parent = os.path.dirname(os.path.abspath(out))
    if parent_made_here and not os.path.exists(parent):
        return
    if not os.path.isdir(parent):
        raise UserError(f"--out={out}: the folder {parent} does not exist; create it or choose another path")
    if not files.can_write_in(parent):
        raise UserError(f"--out={out}: the folder {parent} is not writable; choose another path")


# The run folder's own files an --out or its sidecar must never be.
RUN_FILES = ("config.json", "config", "report.json", "report", "calibration.json", "calibration", "metrics.jsonl",
             "ood_stats.npz", "tb")


def export(workdir: str, fmt: str, out: str | None = None, overwrite: bool = False) -> str:
    """Exports the best checkpoint of `workdir`; returns the output path. An existing
    `out` is an error unless `overwrite` and it is a previous export."""
    if fmt not in EXPORTERS:
        raise UserError(f"--format={fmt!r} is not one of {sorted(EXPORTERS)}")
    preflight.check_workdir(workdir, "evaluate")
    config = inference.load_run_config(workdir)
    if config.model.backbone in ("vgg16", "vgg19"):  # same weights; other runtimes have their own conv kernels
        config.model[config.model.backbone] = {**dict(config.model.get(config.model.backbone) or {}),
                                               "conv_impl": "direct"}
    default = os.path.abspath(os.path.join(workdir, "export", "model" + FORMATS[fmt]))
    out = os.path.abspath(out or default)
    check_target(workdir, out, overwrite, parent_made_here=out == default)
    class_names = inference.class_names(config, workdir)
    calibration = inference.load_calibration(workdir)
    model, variables = inference.restore_for_inference(config, workdir, len(class_names))
    ood = inference.load_ood(workdir, calibration)
    names = output_names(model, ood is not None)
    record = sidecar(config, workdir, fmt, class_names, names, calibration)  # reads report.json: before writing
    if calibration is None:
        log.warning("no calibration.json in %s (run --mode=evaluate first): exporting the raw softmax "
                    "(temperature 1) with no abstention rule", workdir)
    fn = graph_fn(model, variables, schema.temperature(calibration), ood)
    if out == default:
        files.make_dirs(os.path.dirname(out))
    tmp = files.temp_dir(os.path.dirname(out), ".export-")
    try:
        target = os.path.join(tmp, os.path.basename(out))
        EXPORTERS[fmt](fn, int(config.image_size), target, names)
        files.write_json(os.path.join(tmp, "sidecar.json"), record)
        files.replace_path(target, out, is_previous_export)
        files.replace_path(os.path.join(tmp, "sidecar.json"), out + ".json", lambda p: is_previous_export(out))
    finally:
        files.remove(tmp)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--format", required=True, help="onnx | savedmodel | tflite")
    ap.add_argument("--out", default=None, help="output path (default <workdir>/export/model.<ext>)")
    ap.add_argument("--overwrite", action="store_true", help="replace a previous export at --out (recognised by "
                    "its sidecar <out>.json); anything else at --out is never replaced")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        path = export(args.workdir, args.format, args.out, overwrite=args.overwrite)
    except UserError as err:
        print(f"brainjax: error: {err}", file=sys.stderr)
        return 1
    except ImportError as err:
        advice = missing_extra(err) or f"{err} (the exporters are optional: pip install 'brainjax[export]')"
        print(f"brainjax: error: {args.format} export: {advice}", file=sys.stderr)
        return 1
    print(f"wrote {path} and {path}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
