"""Throughput benchmark: brainjax steps vs Keras 3 on the same work, in one run.

  python benchmarks/benchmark.py            # 224 px and 64 px, VGG16 / ResNet50V2 / tiny
  python benchmarks/benchmark.py --quick    # fewer settings and repeats (< 10 min on 2 cores)

Measures images/s (median of >= 3 timed repeats after a warm-up) of
  (a) the frozen-base train step with on-device degradation (seed chain),
  (b) the full fine-tune train step, (c) the eval step, (d) the tf.data pipeline from cache,
and, where Keras is installed, the same frozen-base recipe in Keras 3 (TF backend, Adam,
batch 32) as the seed runs it (Keras's default: no XLA on CPU) and with jit_compile=True.
FLOPs per image come from XLA cost analysis; achieved GFLOP/s are compared with a float32
matmul peak measured in the same run. Writes benchmark.json. Synthetic, device-resident
batches feed the steps, so the GPU path needs no TensorFlow.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout, for brainjax
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # this folder, for baselines

import baselines  # noqa: E402  (Keras / PyTorch reference models)
from baselines import median_rate  # noqa: E402
from brainjax import degrade, feature_cache, files, models, parallel, steps, xla_flags  # noqa: E402
from brainjax import state as state_lib  # noqa: E402

# brainjax name of each competitor -> its key prefix in the rows ("<prefix>_<kind>_img_s").
COMPETITORS = {"keras": "keras_default", "torch_compile": "torch_compile", "torch_eager": "torch_eager"}


def matmul_peak_gflops(dtype=jnp.float32, n: int = 2048, repeats: int = 3) -> float:
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    rate = median_rate(lambda: f(a).block_until_ready(), 1, repeats)
    return 2 * n**3 * rate / 1e9


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def benchmark_config(backbone: str, size: int, batch: int, dtype: str = "float32"):
    """The default config as the benchmarks train it."""
    from configs import default

    c = default.get_config()
    c.model.backbone, c.image_size, c.batch_size = backbone, size, batch
    c.model.dtype = dtype
    # like for like with the Keras and PyTorch baselines (no auxiliary head), and the tiny
    # CNN the earlier figures were measured with
    c.model.quality_head.enabled = False
    c.model.tiny.widths = (8, 16, 32, 64)
    if backbone != "tiny":
        c.model.head_hidden, c.model.dropout = (1024, 512), 0.5
    return c


def flax_rates(backbone: str, size: int, batch: int, repeats: int, dtype: str = "float32",
               kinds: tuple[str, ...] = ("frozen", "frozen_degrade", "finetune")) -> dict:
    """img/s and FLOPs/img of the frozen step (like Keras's: no degradation), the frozen
    step with the on-device degradation chain (its cost is its own line), the fine-tune
    step and the eval forward."""
    c = benchmark_config(backbone, size, batch, dtype)
    model = models.create_model(c.model, 4)
    rng = np.random.default_rng(0)
    batch_data = jax.device_put({"image": rng.integers(0, 256, (batch, size, size, 1), dtype=np.uint8),
                                 "label": rng.integers(0, 4, (batch,)).astype(np.int32)})
    out = {}
    variables = models.init_variables(model, jax.random.key(0), (size, size, 1))
    for kind, trainable, dcfg in (("frozen", ("^head/",), {"recipe": "none"}),
                                  ("frozen_degrade", ("^head/",), degrade.SEED_CHAIN_CFG),
                                  ("finetune", (".*",), {"recipe": "none"})):
        if kind not in kinds:
            continue
        c.trainable = trainable
        state, tx, labels = state_lib.create_train_state(c, model, 4, jax.random.key(0), 10, variables=variables)
        step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, label_tree=labels,
                                         degrade_cfg=dcfg), donate_argnums=0)
        compiled = step.lower(state, batch_data, jax.random.key(0)).compile()
        holder = [jax.device_put(state)]

        def run():
            holder[0], m = compiled(holder[0], batch_data, jax.random.key(0))
            jax.block_until_ready(m)

        out[f"{kind}_img_s"] = median_rate(run, batch, repeats)
        out[f"{kind}_flops_per_img"] = _flops(compiled) / batch
    fwd = jax.jit(lambda v, x: model.apply(v, steps.to_float_images(x), train=False))
    compiled = fwd.lower(variables, batch_data["image"]).compile()
    out["eval_img_s"] = median_rate(lambda: compiled(variables, batch_data["image"]).block_until_ready(), batch, repeats)
    out["forward_flops_per_img"] = _flops(compiled) / batch
    # Model FLOPs (for MFU) count the standard, direct convolutions; the executed FLOPs of
    # XLA's cost analysis are fewer where VGG runs Winograd (conv_impl "auto" on CPU).
    out["model_forward_flops_per_img"] = out["forward_flops_per_img"]
    if backbone.startswith("vgg"):
        direct = models.create_model({**c.model.to_dict(), backbone: {"conv_impl": "direct"}}, 4)
        lowered = jax.jit(lambda v, x: direct.apply(v, steps.to_float_images(x), train=False)).lower(
            variables, batch_data["image"])
        out["model_forward_flops_per_img"] = _flops(lowered.compile()) / batch
    if "frozen" in kinds:
        out["frozen_flops_ratio"] = out["frozen_flops_per_img"] / out["forward_flops_per_img"]
        # frozen step in model FLOPs: the forward counted directly + the (tiny) head update
        out["frozen_model_flops_per_img"] = (out["frozen_flops_per_img"] - out["forward_flops_per_img"]
                                             + out["model_forward_flops_per_img"])
    return out


def pipeline_rate(size: int, batch: int, data_dir: str | None) -> float | None:
    """img/s of the tf.data training pipeline from cache (phantom), or None without TF."""
    try:
        from brainjax.data.pipeline import InputPipeline
    except ImportError:  # GPU machines without TensorFlow
        return None
    c = benchmark_config("tiny", size, batch)
    c.data_dir = data_dir
    p = InputPipeline(c, num_local_devices=1)
    for _ in p.train_epoch(c.train_split, 0, 0):  # fills the cache
        pass
    rates = []
    for epoch in range(1, 4):
        t0, n = time.perf_counter(), 0
        for b in p.train_epoch(c.train_split, epoch, 0):
            n += b["image"].shape[1]
        rates.append(n / (time.perf_counter() - t0))
    return float(np.median(rates))


def _loop_images_per_sec(config, workdir: str) -> float:
    """Training images/s of the whole loop (pipeline, device prefetch, metric windows,
    checkpoints; compilation excluded), averaged over the epochs after the first (the
    first also fills the tf.data cache: decoding and resizing every image once)."""
    from brainjax import train  # the engine itself; TensorFlow needed for its pipeline

    train.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        epochs = [json.loads(l) for l in f if '"kind": "epoch"' in l]
    return float(np.mean([e["images_per_sec"] for e in epochs[1:]]))


CKPT_VARIANTS = ("host", "host_sync")


def mean_ci95(values: list[float]) -> list[float | None]:
    """[mean, low, high]: the mean of `values` and its two-sided 95% Student-t interval
    (what a handful of noisy paired measurements can say about an effect's size)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    if len(v) < 2:
        return [mean, None, None]
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return [mean, mean - half, mean + half]


def checkpoint_overhead(d: Any, tmp: str, modes: tuple[str, ...], variants: tuple[str, ...],
                        repeats: int) -> dict:
    """Per parallel mode and save variant: the loop's training images/s with saves every
    10 steps vs none, epoch by epoch in one run. One `train.training_run` (pipeline and
    its tf.data cache, compiled step) serves successive `loop.fit` calls on one workdir,
    each resuming the last and training one more epoch, alternately with saves every 10
    steps and with none, in ABBA blocks (on, off, off, on). This machine's speed drifts
    by more than the effect over minutes: adjacent epochs ~15 s apart share the drift,
    and the ABBA block cancels its linear part. Reported: each block's overhead, 1 -
    (on images/s summed) / (off summed), their median, their mean with its 95% interval
    (`mean_ci95`); the same for the process CPU time of the epochs (all threads: the
    saves' own work, which a 2-core host pays whether or not it delays the step, and which
    other tenants' load disturbs far less than the wall clock); and the median time one
    save blocks the training thread. The first epoch (it fills the tf.data cache) is not
    timed. Variants: config checkpoint_from ('host' | 'device'), with '_sync' for the
    handover on the training thread (what several processes do)."""
    from brainjax import checkpoint, loop, train, writers  # the engine itself; TensorFlow for its pipeline

    out: dict = {}
    real_save, real_default = checkpoint.Checkpoints.save, checkpoint.background_default
    blocked: list[float] = []

    def timed_save(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real_save(self, *args, **kwargs)
        finally:
            blocked.append(time.perf_counter() - t0)

    def one_more_epoch(run: Any, workdir: str, epoch: int, every: int) -> tuple[float, float]:
        """(training images/s, process CPU seconds of the whole `fit` call) of one epoch."""
        c = d.copy_and_resolve_references()
        c.num_epochs, c.checkpoint_every_steps = epoch, every
        w = writers.default_writers(workdir)
        cpu0 = time.process_time()
        try:
            loop.fit(c, workdir, state=run.host_state, step_fn=run.step_fn, source=run.source,
                     validate=run.validate, rng=run.train_rng, writers=w, tag=run.tag)
        finally:
            w.close()
        cpu = time.process_time() - cpu0
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            return [json.loads(l) for l in f if '"kind": "epoch"' in l][-1]["images_per_sec"], cpu

    checkpoint.Checkpoints.save = timed_save
    try:
        for mode in modes:
            for variant in variants:
                source, sync = variant.removesuffix("_sync"), variant.endswith("_sync")
                checkpoint.background_default = (lambda: False) if sync else real_default
                name = f"{mode}_{variant}"
                d.parallel, d.checkpoint_from = mode, source
                workdir = os.path.join(tmp, f"ckpt_{name}")
                with parallel.using(mode):
                    run = train.training_run(d, workdir)
                    one_more_epoch(run, workdir, 1, 0)  # fills the tf.data cache: not timed
                    epoch, blocks, cpu_blocks = 1, [], []
                    for _ in range(repeats):
                        rates, cpus = {10: [], 0: []}, {10: [], 0: []}
                        for every in (10, 0, 0, 10):
                            epoch += 1
                            del blocked[:]
                            rate, cpu = one_more_epoch(run, workdir, epoch, every)
                            rates[every].append(rate)
                            cpus[every].append(cpu)
                            if every:
                                out.setdefault(f"{name}_save_blocking_ms", []).append(
                                    1000 * float(np.median(blocked[:-1])))  # the last: the epoch end's, untimed
                        blocks.append(100 * (1 - sum(rates[10]) / sum(rates[0])))
                        cpu_blocks.append(100 * (sum(cpus[10]) / sum(cpus[0]) - 1))
                        out.setdefault(f"{name}_ckpt_every_10_loop_img_s", []).extend(rates[10])
                        out.setdefault(f"{name}_default_loop_img_s", []).extend(rates[0])
                        out.setdefault(f"{name}_ckpt_every_10_epoch_cpu_s", []).extend(cpus[10])
                        out.setdefault(f"{name}_default_epoch_cpu_s", []).extend(cpus[0])
                out[f"{name}_overhead_runs"] = blocks
                out[f"{name}_checkpoint_overhead_percent_every_10_steps"] = float(np.median(blocks))
                out[f"{name}_checkpoint_overhead_mean_ci95"] = mean_ci95(blocks)
                out[f"{name}_checkpoint_cpu_overhead_runs"] = cpu_blocks
                out[f"{name}_checkpoint_cpu_overhead_mean_ci95"] = mean_ci95(cpu_blocks)
    finally:
        checkpoint.Checkpoints.save, checkpoint.background_default = real_save, real_default
    return out


def loop_rates(size: int, batch: int, data_dir: str | None, repeats: int = 3,
               modes: tuple[str, ...] = ("pmap", "jit"), ckpt_variants: tuple[str, ...] = CKPT_VARIANTS,
               ckpt_repeats: int = 3, loop_repeats: int = 2, ckpt_only: bool = False) -> dict | None:
    """Per parallel mode (config.parallel), side by side in this process:
    loop_efficiency: the whole loop's training images/s on frozen VGG16 (seed chain
    degradation on device, as in the bare step) / the bare step's, the bare step measured
    right before and right after the loops (their mean: this machine's speed drifts), the
    loop's rate the median of `loop_repeats` runs per mode, interleaved (with the median
    of the per-pair ratios, jit / pmap, which drift disturbs least); and
    checkpoint_overhead_percent: the default config's loop (default dataset, 56 steps an
    epoch) with saves every 10 steps vs none but the epoch end's (outside the timing),
    per `ckpt_variants`, epochs interleaved in one run (see `checkpoint_overhead`);
    `ckpt_only`: that alone. None where TensorFlow (the input pipeline) is missing."""
    import tempfile

    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return None
    out: dict = {"devices": jax.device_count()}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = data_dir or os.path.join(tmp, "tfds")
        if not ckpt_only:
            out.update(_vgg_loop_rates(size, batch, data_dir, tmp, repeats, modes, loop_repeats))
        d = benchmark_config("tiny", 64, 64)  # the default dataset: 56 steps, 5 intra-epoch saves per epoch
        d.data_dir, d.eval.corruptions = data_dir, ()
        d.early_stopping.enabled = False
        out.update(checkpoint_overhead(d, tmp, modes, ckpt_variants, ckpt_repeats))
    lead = f"{modes[0]}_{parallel.checkpoint_source()}"  # the keys of the single-mode benchmark: the default path
    if f"{lead}_checkpoint_overhead_percent_every_10_steps" not in out:
        lead = f"{modes[0]}_{ckpt_variants[0]}"
    out["checkpoint_overhead_percent_every_10_steps"] = out[f"{lead}_checkpoint_overhead_percent_every_10_steps"]
    if not ckpt_only:
        out.update(loop_img_s=out[f"{modes[0]}_loop_img_s"], loop_efficiency=out[f"{modes[0]}_loop_efficiency"])
    return out


def _vgg_loop_rates(size: int, batch: int, data_dir: str, tmp: str, repeats: int, modes: tuple[str, ...],
                    loop_repeats: int) -> dict:
    """The loop_efficiency part of `loop_rates`."""
    out: dict = {}
    c = benchmark_config("vgg16", size, batch)
    c.dataset, c.data_dir = "brain_phantom/small", data_dir
    c.trainable, c.num_epochs = ("^head/",), 3
    c.train_degrade = degrade.SEED_CHAIN_CFG
    c.eval.corruptions, c.early_stopping.enabled = (), False
    before = flax_rates("vgg16", size, batch, repeats, kinds=("frozen",))["frozen_img_s"]
    for rep in range(loop_repeats):  # the modes interleaved: this machine's speed drifts
        for mode in modes:
            c.parallel = mode
            out.setdefault(f"{mode}_loop_img_s_runs", []).append(
                _loop_images_per_sec(c, os.path.join(tmp, f"vgg_{mode}_{rep}")))
    after = flax_rates("vgg16", size, batch, repeats, kinds=("frozen",))["frozen_img_s"]
    out["loop_bare_step_img_s"] = [before, after]
    for mode in modes:
        out[f"{mode}_loop_img_s"] = float(np.median(out[f"{mode}_loop_img_s_runs"]))
        out[f"{mode}_loop_efficiency"] = out[f"{mode}_loop_img_s"] / float(np.mean([before, after]))
    if len(modes) > 1:  # each pair's ratio, run side by side: the figure drift disturbs least
        ratios = [b / a for a, b in zip(out[f"{modes[0]}_loop_img_s_runs"], out[f"{modes[1]}_loop_img_s_runs"])]
        out[f"{modes[1]}_over_{modes[0]}_loop_img_s_runs"] = ratios
        out[f"{modes[1]}_over_{modes[0]}_loop_img_s"] = float(np.median(ratios))
    return out


def _latency_ms(fn: Any, repeats: int) -> dict:
    """Median and p95 wall time of `fn()` in ms over `repeats` calls after two warm-ups."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return {"median_ms": float(np.median(times)), "p95_ms": float(np.percentile(times, 95))}


def export_latency(settings: tuple = (("tiny", 64), ("vgg16", 224), ("resnet50v2", 224)), repeats: int = 20) -> dict:
    """CPU latency of the exported inference (uint8 images -> probabilities), batch 1 and
    32, median and p95: JAX jit vs onnxruntime vs TFLite (1 thread and default threads),
    random weights, measured side by side in this process."""
    import tempfile

    from brainjax import export

    out: dict = {}
    for arch, size in settings:
        c = benchmark_config(arch, size, 32)
        if arch.startswith("vgg"):
            c.model[arch] = {"conv_impl": "direct"}
        model = models.create_model(c.model, 4)
        variables = models.init_variables(model, jax.random.key(0), (size, size, 1))
        fn, names = export.graph_fn(model, variables, 1.0), export.output_names(model)
        jitted = jax.jit(fn)
        row: dict = {}
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path, tfl_path = os.path.join(tmp, "m.onnx"), os.path.join(tmp, "m.tflite")
            runners: dict = {}
            try:
                export.export_onnx(fn, size, onnx_path, names)
                import onnxruntime as ort

                for threads in (1, 0):
                    so = ort.SessionOptions()
                    so.intra_op_num_threads = threads
                    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
                    runners[f"onnxruntime_{threads or 'default'}_threads"] = (
                        lambda x, sess=sess: sess.run(["probabilities"], {"images": x})[0])
            except ImportError as err:
                print(f"  onnx skipped: {err}")
            try:
                export.export_tflite(fn, size, tfl_path, names)
                import tensorflow as tf

                for threads in (1, None):
                    interp = tf.lite.Interpreter(model_path=tfl_path, num_threads=threads)

                    def run_tfl(x, interp=interp, shape=[]):
                        inp = interp.get_input_details()[0]
                        if shape != [x.shape]:  # (re)allocate for a new batch size only
                            interp.resize_tensor_input(inp["index"], x.shape)
                            interp.allocate_tensors()
                            shape[:] = [x.shape]
                        interp.set_tensor(inp["index"], x)
                        interp.invoke()
                        return interp.get_tensor(interp.get_output_details()[0]["index"])

                    runners[f"tflite_{threads or 'default'}_threads"] = run_tfl
            except ImportError as err:
                print(f"  tflite skipped: {err}")
            runners["jax_jit"] = lambda x: np.asarray(jitted(x)[0])
            for batch in (1, 32):
                x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 1), dtype=np.uint8)
                for name, run in runners.items():
                    n = repeats if batch == 1 or arch == "tiny" else max(repeats // 4, 3)
                    r = _latency_ms(lambda: run(x), n)
                    r["per_image_ms"] = r["median_ms"] / batch
                    row[f"{name}_batch{batch}"] = r
                    print(f"  {arch}@{size} batch {batch} {name}: median {r['median_ms']:.2f} ms, "
                          f"p95 {r['p95_ms']:.2f} ms ({r['per_image_ms']:.2f} ms/image)", flush=True)
        out[f"{arch}@{size}"] = row
    return out


def seed_protocol_inputs_phantom(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """n phantom slices (uint8 [n, size, size, 1]) with balanced labels, no TF needed."""
    from brainjax.data import phantom

    labels = (np.arange(n) % 4).astype(np.int32)
    return np.stack([phantom.generate_slice(7, i, int(l), size) for i, l in enumerate(labels)]), labels


def fit_head_cached(model: Any, variables: dict, images: np.ndarray, labels: np.ndarray, *, epochs: int,
                    batch: int = 32, learning_rate: float = 1e-3, seed: int = 0, feature_batch: int = 64) -> dict:
    """The seed protocol with the engine's feature cache, in memory and on one device:
    inputs (each image + one fixed degraded copy) -> pooled base features once ->
    `epochs` epochs of the engine's head step (Adam, cross-entropy, the head's dropout).
    Returns the number of inputs and the time of each phase (seconds)."""
    c = benchmark_config("vgg16", images.shape[1], batch)
    c.trainable, c.optimizer.learning_rate = ("^head/",), learning_rate
    t0 = time.perf_counter()
    x, y = feature_cache.seed_protocol_inputs(images, labels, seed)
    t1 = time.perf_counter()
    feats = jax.device_put(feature_cache.as_head_input(
        feature_cache.pooled_features(model, variables, x, batch=feature_batch)))
    t2 = time.perf_counter()
    state, tx, label_tree = state_lib.create_train_state(c, model, 4, jax.random.key(seed), 1, variables=variables)
    step = jax.jit(functools.partial(steps.train_step, model=feature_cache.HeadOnly(model.head), tx=tx,
                                     label_tree=label_tree, inputs="features"), donate_argnums=0)
    state, y, rng = jax.device_put(state), jax.device_put(y.astype(np.int32)), jax.random.key(seed)
    for idx in feature_cache.batch_order(len(y), batch, epochs, seed):
        state, metrics = step(state, {"image": feats[idx], "label": y[idx]}, rng)
    jax.block_until_ready(state)
    t3 = time.perf_counter()
    return {"num_inputs": int(len(y)),
            "seconds": {"degraded_copies": t1 - t0, "features": t2 - t1, "head_training": t3 - t2, "total": t3 - t0}}


def seed_protocol_end_to_end(n_images: int, size: int, epochs: int, batch: int, with_keras: bool) -> dict:
    """The seed protocol measured end to end on the phantom, both frameworks on the same
    inputs: n_images slices + one fixed degraded copy each, frozen VGG16 + the seed's head,
    Adam 1e-3, batch 32, `epochs` epochs. brainjax: degraded copies + pooled features once +
    head training on the cache (`fit_head_cached`, compilation included). Keras: its
    default `model.fit` on the same float RGB arrays (graph building included; the degraded
    copies are given to it for free)."""
    images, labels = seed_protocol_inputs_phantom(n_images, size)
    model = models.create_model({"backbone": "vgg16", "head": "enhanced", "head_hidden": (1024, 512),
                                 "dropout": 0.5}, 4)
    variables = models.init_variables(model, jax.random.key(0), (size, size, 1))
    fit = fit_head_cached(model, variables, images, labels, epochs=epochs, batch=batch)
    out = {"images": n_images, "inputs_per_epoch": fit["num_inputs"], "epochs": epochs, "image_size": size,
           "brainjax_cached_seconds": fit["seconds"]["total"], "brainjax_phases_seconds": fit["seconds"]}
    if with_keras:
        x, y = feature_cache.seed_protocol_inputs(images, labels)
        seconds = baselines.keras_fit_seconds(np.repeat(x, 3, axis=-1).astype(np.float32), y, epochs=epochs,
                                              batch=batch)
        if seconds is not None:
            out["keras_default_seconds"] = seconds
            out["speedup_vs_keras"] = seconds / out["brainjax_cached_seconds"]
    return out


def _settings(args) -> tuple[list, list, dict]:
    """(brainjax settings, competitor settings, seed-protocol run) for the chosen mode."""
    if args.gpu:
        return [("vgg16", 224), ("resnet50v2", 224), ("tiny", 64)], [("vgg16", 224)], {}
    if args.quick:
        return [("tiny", 64), ("vgg16", 112)], [("vgg16", 112)], {"n_images": 256, "size": 64}
    return ([("tiny", 64), ("vgg16", 64), ("vgg16", 224), ("resnet50v2", 64), ("resnet50v2", 224)],
            [("vgg16", 224), ("resnet50v2", 224)], {"n_images": 1000, "size": 64})


def _competitors(arch: str, size: int, args, repeats: int) -> dict:
    """Keras (CPU runs) and PyTorch (VGG16; CPU, or CUDA + bf16 with --gpu) rates, where installed."""
    out: dict = {}
    if not args.no_keras:
        out.update(baselines.keras_rates(arch, size, args.batch, repeats) or {})
    if arch == "vgg16" and not args.no_torch:
        out.update(baselines.torch_rates(size, args.batch, repeats, device="cuda" if args.gpu else "cpu",
                                         bf16=args.gpu) or {})
    return out


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}"


def print_table(rows: dict) -> None:
    cols = [("brainjax", "frozen_img_s", "finetune_img_s"), ("keras", "keras_default_frozen_img_s", "keras_default_finetune_img_s"),
            ("keras+XLA", "keras_xla_frozen_img_s", "keras_xla_finetune_img_s"),
            ("torch", "torch_eager_frozen_img_s", "torch_eager_finetune_img_s"),
            ("torch.compile", "torch_compile_frozen_img_s", "torch_compile_finetune_img_s")]
    print("\nimages/s, frozen base (+ on-device degradation for brainjax) / full fine-tune")
    print(f"{'setting':16s}" + "".join(f"{c[0]:>20s}" for c in cols) + f"{'brainjax eval':>16s}")
    for key, r in rows.items():
        print(f"{key:16s}" + "".join(f"{_fmt(r.get(f)) + ' / ' + _fmt(r.get(t)):>20s}" for _, f, t in cols)
              + f"{_fmt(r.get('eval_img_s')):>16s}")


# An earlier result of this benchmark (its --out may be replaced by the next run).
PREVIOUS_RESULT = files.json_with_keys("device", "date")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--data_dir", default=None, help="tfds data_dir for the pipeline measurement")
    ap.add_argument("--no_keras", action="store_true")
    ap.add_argument("--no_torch", action="store_true")
    ap.add_argument("--no_loop", action="store_true", help="skip loop_efficiency / checkpoint overhead")
    ap.add_argument("--export", action="store_true",
                    help="only the export latency table: JAX jit vs onnxruntime vs TFLite, batch 1 and 32")
    ap.add_argument("--loop_only", action="store_true",
                    help="only loop_efficiency and the checkpoint overhead (VGG16 at 112 px)")
    ap.add_argument("--ckpt_variants", default=",".join(CKPT_VARIANTS),
                    help="--loop_only: save variants to time: host, device, each with _sync for the handover on "
                         "the training thread")
    ap.add_argument("--ckpt_repeats", type=int, default=3, help="--loop_only: ABBA blocks (4 epochs) per variant")
    ap.add_argument("--ckpt_only", action="store_true",
                    help="with --loop_only: the checkpoint overhead alone (no VGG16 loop runs)")
    ap.add_argument("--modes", default="pmap,jit", help="--loop_only: parallel modes to time, in this order")
    ap.add_argument("--loop_repeats", type=int, default=2, help="--loop_only: interleaved loop runs per mode")
    ap.add_argument("--dtype", default="float32", help="compute dtype (params stay float32): float32 | bfloat16")
    ap.add_argument("--gpu", action="store_true",
                    help="accelerator table: bfloat16, batch 256, VGG16/ResNet50V2 at 224, MFU vs a bf16 matmul "
                         "peak measured in the same call, PyTorch (CUDA, bf16 autocast) where installed; no TF")
    ap.add_argument("--matmul_n", type=int, default=None, help="side of the peak matmul (8192 with --gpu, else 2048)")
    ap.add_argument("--out", default="benchmark.json")
    args = ap.parse_args(argv)
    xla_flags.apply_cpu_defaults()  # what launch.py runs with; before the first JAX computation
    repeats = args.repeats or 3
    if args.export:
        result = {"device": str(jax.devices()[0]), "date": time.strftime("%Y-%m-%d"),
                  "export_latency": export_latency(repeats=max(repeats, 20))}
        files.write_json(args.out, result, previous=PREVIOUS_RESULT)
        return result
    if args.loop_only:
        loop = loop_rates(112, args.batch, args.data_dir, repeats, ckpt_variants=tuple(args.ckpt_variants.split(",")),
                          ckpt_repeats=args.ckpt_repeats, loop_repeats=args.loop_repeats,
                          ckpt_only=args.ckpt_only, modes=tuple(args.modes.split(","))) or {}
        loop.update(device=str(jax.devices()[0]), date=time.strftime("%Y-%m-%d"))
        files.write_json(args.out, loop, previous=PREVIOUS_RESULT)
        print(json.dumps(loop, indent=2))
        return loop
    if args.gpu:
        args.dtype, args.batch, args.no_keras = "bfloat16", max(args.batch, 256), True
    settings, competitor_settings, seed_run = _settings(args)
    result: dict = {"device": str(jax.devices()[0]), "jax": jax.__version__, "batch": args.batch,
                    "dtype": args.dtype, "date": time.strftime("%Y-%m-%d"), "quick": args.quick,
                    "xla_flags": os.environ.get("XLA_FLAGS", "")}
    result["matmul_peak_gflops"] = matmul_peak_gflops(dtype=jnp.dtype(args.dtype), n=args.matmul_n or (8192 if args.gpu else 2048),
                                                      repeats=repeats)
    print(f"device {result['device']}; {args.dtype} matmul peak {result['matmul_peak_gflops']:.1f} GFLOP/s", flush=True)
    rows = {}
    for arch, size in settings:
        r = flax_rates(arch, size, args.batch, repeats, args.dtype)
        r["frozen_gflops"] = r["frozen_img_s"] * r["frozen_model_flops_per_img"] / 1e9  # model FLOPs
        r["frozen_peak_fraction"] = r["frozen_gflops"] / result["matmul_peak_gflops"]  # MFU
        r["frozen_executed_peak_fraction"] = (r["frozen_img_s"] * r["frozen_flops_per_img"] / 1e9
                                              / result["matmul_peak_gflops"])  # hardware FLOPs utilisation
        rows[f"{arch}@{size}"] = r
        if r.get("frozen_degrade_img_s"):
            r["degrade_chain_cost"] = r["frozen_img_s"] / r["frozen_degrade_img_s"] - 1.0
        print(f"brainjax {arch}@{size}: frozen {r['frozen_img_s']:.1f} img/s "
              f"({r['frozen_gflops']:.1f} model GFLOP/s, MFU {100 * r['frozen_peak_fraction']:.0f}%, "
              f"executed {100 * r['frozen_executed_peak_fraction']:.0f}% of peak; "
              f"FLOPs ratio frozen/forward {r['frozen_flops_ratio']:.2f}) | frozen + degradation chain "
              f"{r.get('frozen_degrade_img_s', float('nan')):.1f} (chain cost {100 * r.get('degrade_chain_cost', 0):.0f}%) | "
              f"finetune {r['finetune_img_s']:.1f} | eval {r['eval_img_s']:.1f}", flush=True)
    for arch, size in competitor_settings:
        r = rows[f"{arch}@{size}"]
        r.update(_competitors(arch, size, args, repeats))
        print(f"competitors {arch}@{size}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()
                                                        if k.startswith(("keras", "torch")) and isinstance(v, float)),
              flush=True)
        for kind in ("frozen", "finetune"):
            for name, prefix in COMPETITORS.items():
                if r.get(f"{prefix}_{kind}_img_s"):
                    r[f"{kind}_step_ratio_vs_{name}"] = r[f"{kind}_img_s"] / r[f"{prefix}_{kind}_img_s"]
    result["brainjax"] = rows
    main_row = rows[f"{competitor_settings[0][0]}@{competitor_settings[0][1]}"]
    for key in ("frozen_step_ratio_vs_keras", "finetune_step_ratio_vs_keras", "frozen_step_ratio_vs_torch_compile",
                "finetune_step_ratio_vs_torch_compile"):
        result[key] = main_row.get(key)
    vgg_key = next((k for k in rows if k.startswith("vgg16")), None)
    if vgg_key is not None:  # the headline figures are VGG16's
        result["frozen_flops_ratio"] = rows[vgg_key]["frozen_flops_ratio"]
        result["frozen_vgg16_mfu"] = rows[vgg_key]["frozen_peak_fraction"]
        result["frozen_vgg16_executed_flops_fraction"] = rows[vgg_key]["frozen_executed_peak_fraction"]
    if seed_run:
        print(f"seed protocol end to end: {seed_run['n_images']} phantom images at {seed_run['size']} px, 20 epochs",
              flush=True)
        result["seed_protocol"] = seed_protocol_end_to_end(seed_run["n_images"], seed_run["size"], 20, args.batch,
                                                           with_keras=not args.no_keras)
        result["seed_protocol_speedup_vs_keras"] = result["seed_protocol"].get("speedup_vs_keras")
    result["pipeline_img_s"] = pipeline_rate(64 if not args.gpu else 224, args.batch, args.data_dir)
    if not args.gpu and not args.no_loop and vgg_key is not None:
        vgg = vgg_key
        loop = loop_rates(int(vgg.split("@")[1]), args.batch, args.data_dir, repeats)
        if loop:
            result.update(loop)
            print(f"loop: {loop['loop_img_s']:.1f} img/s vs bare step {np.mean(loop['loop_bare_step_img_s']):.1f} -> "
                  f"loop_efficiency {loop['loop_efficiency']:.3f}; checkpoints every 10 steps cost "
                  f"{loop['checkpoint_overhead_percent_every_10_steps']:.1f}% of the default config's "
                  "training rate", flush=True)
    result["peak_host_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    files.write_json(args.out, result, previous=PREVIOUS_RESULT)
    print_table(rows)
    print(json.dumps({k: v for k, v in result.items() if k != "brainjax"}, indent=2))
    return result


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
