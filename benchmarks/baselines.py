"""Reference implementations of the seed's recipe in other frameworks, for the benchmark.

The recipe: ImageNet-architecture base (random weights: speed does not depend on them),
global average pooling, Dense 1024 + dropout 0.5, Dense 512 + dropout 0.5, Dense 4,
Adam, cross-entropy, batch 32; frozen base or full fine-tune. Each function returns
images/s per variant, or None when the framework is not installed.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import numpy as np


def median_rate(fn: Callable[[], Any], items: int, repeats: int, min_seconds: float = 1.0) -> float:
    """items/s of fn (which must block), median of `repeats` timings after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0, n = time.perf_counter(), 0
        while True:
            fn()
            n += 1
            if time.perf_counter() - t0 >= min_seconds:
                break
        times.append((time.perf_counter() - t0) / n)
    return items / float(np.median(times))


def _import_keras() -> Any:
    """Keras 3 on its TensorFlow backend (the seed's framework), or None if not installed."""
    try:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        import keras
    except ImportError:
        return None
    return keras


def keras_rates(arch: str, size: int, batch: int, repeats: int) -> dict | None:
    """Keras 3 (TF backend, the seed's framework): `train_on_batch` img/s as the seed runs
    it (Keras's default, no XLA on CPU) and with jit_compile=True; frozen and fine-tune."""
    keras = _import_keras()
    if keras is None:
        return None
    out = {}
    x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 4, (batch,))
    for label, jit in (("keras_default", False), ("keras_xla", True)):
        model, base = keras_seed_model(keras, arch, size)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=jit)
        out[f"{label}_frozen_img_s"] = median_rate(lambda: model.train_on_batch(x, y), batch, repeats)
        base.trainable = True
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=jit)
        out[f"{label}_finetune_img_s"] = median_rate(lambda: model.train_on_batch(x, y), batch, repeats)
    return out


def keras_seed_model(keras: Any, arch: str, size: int) -> tuple[Any, Any]:
    """(model, base): the seed's Keras model with its base frozen (not compiled)."""
    ctor = {"vgg16": keras.applications.VGG16, "resnet50v2": keras.applications.ResNet50V2}[arch]
    base = ctor(weights=None, include_top=False, input_shape=(size, size, 3))
    base.trainable = False
    inp = keras.Input((size, size, 3))
    h = keras.layers.GlobalAveragePooling2D()(base(inp, training=False))
    h = keras.layers.Dropout(0.5)(keras.layers.Dense(1024, activation="relu")(h))
    h = keras.layers.Dropout(0.5)(keras.layers.Dense(512, activation="relu")(h))
    return keras.Model(inp, keras.layers.Dense(4, activation="softmax")(h)), base


def keras_fit_seconds(x: np.ndarray, y: np.ndarray, *, epochs: int, batch: int, arch: str = "vgg16") -> float | None:
    """Wall-clock seconds of the seed's `model.fit` (Keras default: no XLA), frozen base."""
    keras = _import_keras()
    if keras is None:
        return None
    model, _ = keras_seed_model(keras, arch, x.shape[1])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=True, verbose=0)
    return time.perf_counter() - t0


def torch_vgg16(torch: Any) -> Any:
    """torchvision-free VGG16 base + the seed's head (same layer shapes as keras.applications)."""
    nn = torch.nn
    layers, cin = [], 3
    for convs, width in zip((2, 2, 3, 3, 3), (64, 128, 256, 512, 512)):
        for _ in range(convs):
            layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(inplace=True)]
            cin = width
        layers.append(nn.MaxPool2d(2))
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1024), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(1024, 512), nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, 4))
    return nn.Sequential(nn.Sequential(*layers), head)


def torch_rates(size: int, batch: int, repeats: int, *, device: str = "cpu", bf16: bool = False,
                compile_modes: tuple[bool, ...] = (False, True)) -> dict | None:
    """PyTorch VGG16, channels_last, eager and torch.compile; frozen base (no grad, eval
    mode) and full fine-tune; bf16 autocast when `bf16`. A variant that fails to compile
    is reported as an error string instead of a rate."""
    try:
        import torch
    except ImportError:
        return None
    out: dict = {"torch_version": torch.__version__}
    x = torch.rand(batch, 3, size, size, device=device).mul(255).to(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (batch,), device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for compiled in compile_modes:
        label = "torch_compile" if compiled else "torch_eager"
        for kind in ("frozen", "finetune"):
            torch.manual_seed(0)
            model = torch_vgg16(torch).to(device).to(memory_format=torch.channels_last)
            base = model[0]
            if kind == "frozen":
                base.requires_grad_(False)
                base.eval()
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.Adam(params, lr=1e-3)
            fwd = torch.compile(model) if compiled else model

            def step():
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
                    loss = torch.nn.functional.cross_entropy(fwd(x), y)
                loss.backward()
                opt.step()
                sync()

            try:
                out[f"{label}_{kind}_img_s"] = median_rate(step, batch, repeats)
            except Exception as e:  # noqa: BLE001 - inductor needs a C++ toolchain; report, don't die
                out[f"{label}_{kind}_img_s"] = None
                out[f"{label}_{kind}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return out
