"""tf.data input pipeline (big_vision / scenic order).

  decode (tfds) -> grayscale -> resize to config.image_size -> uint8 [H, W, 1]
  -> cache (decoded, resized, uint8: ~H*W bytes per example)
  -> train: shuffle per epoch (seeded by (seed, epoch), the same on every process)
     -> batch(global batch, drop_remainder) -> skip the batches a resumed run already
     took -> this process's slice of each global batch
     -> [local_devices, per_device_batch, H, W, 1]
  -> eval: per-process split (tfds.split_for_jax_process) -> batch -> pad the last
     batch with mask=0 -> same layout; every example of the split is seen exactly once,
     whatever the batch size or the number of processes
  -> prefetch.

Training batches are global batches cut into per-process slices (each process caches
the whole training split), so P processes x D devices see exactly the examples, order
and per-example keys of 1 process x P*D devices: the model does not depend on the
layout. Evaluation reads only this process's share and gathers outputs afterwards.

The host ships uint8 one-channel images; float conversion, degradation, channel
replication and backbone preprocessing run on device.
"""

from __future__ import annotations

from brainjax.errors import UserError

import math
import os
from typing import Any, Iterator, Mapping

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import brainjax.data  # noqa: F401  (registers builders)
from brainjax.data import image_folder, kaggle

Batch = dict[str, np.ndarray]


def to_gray_resized(image: tf.Tensor, size: int) -> tf.Tensor:
    """Any decoded image (H, W, 1|3|4, uint8/uint16) -> uint8 [size, size, 1]."""
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        image = tf.image.convert_image_dtype(image, tf.uint8, saturate=True)
    channels = image.shape[-1]
    if channels == 4:
        image = image[..., :3]
    if channels in (3, 4):
        image = tf.image.rgb_to_grayscale(image)
    if image.shape[0] != size or image.shape[1] != size:  # also true for unknown (None) sizes
        image = tf.image.resize(tf.cast(image, tf.float32), (size, size), method="bilinear", antialias=True)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return tf.ensure_shape(image, (size, size, 1))


def load_image_file(path: str, size: int) -> np.ndarray:
    """Reads one image file for prediction: uint8 [size, size, 1].

    Raises ValueError naming the file when it is missing or cannot be decoded.
    """
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        data = tf.io.read_file(path)
        image = tf.io.decode_image(data, channels=0, expand_animations=False)
        return to_gray_resized(image, size).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.OpError) as err:
        raise UserError(f"{path}: not a readable image ({err.message.splitlines()[0][:120]})") from None


def dataset_builder(name: str, data_dir: str | None, manual_dir: str | None, *, class_map: Any = None,
                    test_fraction: float = 0.2):
    """The tfds builder of `config.dataset` (not built yet); for `image_folder`, the config of
    that folder. Unknown names are UserErrors."""
    if name.split("/")[0] == "image_folder":
        cfg = image_folder.folder_config(manual_dir, class_map, test_fraction=test_fraction)
        return image_folder.ImageFolder(config=cfg, data_dir=data_dir)
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise UserError(f"unknown dataset {name!r} (config.dataset): {str(err).splitlines()[0]}") from None


def prepared_builder(name: str, data_dir: str | None, manual_dir: str | None, *, class_map: Any = None,
                     test_fraction: float = 0.2, download: str = ""):
    """tfds builder, built if needed (after `download` fetched the files into manual_dir);
    unknown names and missing manual data are UserErrors."""
    if download:
        kaggle.fetch(download, name, manual_dir)
    builder = dataset_builder(name, data_dir, manual_dir, class_map=class_map, test_fraction=test_fraction)
    if manual_dir and os.path.isfile(manual_dir) and manual_dir.lower().endswith(".zip"):
        manual_dir = os.path.dirname(os.path.abspath(manual_dir))  # tfds wants a folder; the zip is found in it
    if manual_dir:
        manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
    if not builder.is_prepared() and getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None) and \
            not (manual_dir and os.path.isdir(manual_dir)):
        raise UserError(f"dataset {name} must be built from a local copy: set config.manual_dir "
                        f"(now {manual_dir!r}, which is not a folder).\n{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    if not builder.is_prepared() and manual_dir and os.path.isdir(manual_dir) and not os.listdir(manual_dir):
        raise UserError(f"config.manual_dir {manual_dir} is empty: expected the dataset folder (with "
                        f"Training/ and Testing/) or its zip.\n{getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', '')}")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def builder_for(config: Mapping[str, Any]):
    """`prepared_builder` with the dataset fields of a run config."""
    return prepared_builder(config.dataset, config.get("data_dir"), config.get("manual_dir"),
                            class_map=config.get("class_map"), test_fraction=float(config.get("test_fraction", 0.2)),
                            download=config.get("download") or "")


def prepare_dataset(config: Mapping[str, Any]) -> None:
    """Builds the configured tfds dataset if it is not built yet (run by process 0 first;
    see `brainjax.parallel.process_zero_first`)."""
    builder_for(config)


class InputPipeline:
    """Train/eval iterators over one tfds dataset, sharded over processes and devices."""

    def __init__(self, config: Mapping[str, Any], *, num_local_devices: int, process_index: int = 0,
                 process_count: int = 1):
        self.config = config
        self.size = int(config.image_size)
        self.num_local_devices = num_local_devices
        self.process_index, self.process_count = process_index, process_count
        self.builder = builder_for(config)
        self.class_names: list[str] = list(self.builder.info.features["label"].names)
        self._cache: dict[str, tf.data.Dataset] = {}
        self.global_batch = int(config.batch_size)
        self.eval_global_batch = int(config.get("eval_batch_size", config.batch_size))
        for name, gb in (("batch_size", self.global_batch), ("eval_batch_size", self.eval_global_batch)):
            if gb % (num_local_devices * process_count):
                raise UserError(f"config.{name}={gb} must be divisible by the number of devices "
                                 f"({num_local_devices * process_count})")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def num_examples(self, split: str) -> int:
        return int(self.builder.info.splits[split].num_examples)

    def _cached(self, split: str, whole: bool = False) -> tf.data.Dataset:
        """This process's share of `split` (all of it with `whole`), decoded and resized,
        cached in memory."""
        whole = whole or self.process_count == 1
        key = (split, whole)
        if key not in self._cache:
            local = split if whole else tfds.split_for_jax_process(
                split, process_index=self.process_index, process_count=self.process_count, drop_remainder=False)
            ds = self.builder.as_dataset(split=local, shuffle_files=False,
                                         read_config=tfds.ReadConfig(add_tfds_id=False))
            ds = ds.enumerate()  # position within this process's share
            base = 0 if whole else self._process_offset(split)
            size = self.size
            ds = ds.map(lambda i, ex: {"image": to_gray_resized(ex["image"], size),
                                       "label": tf.cast(ex["label"], tf.int32),
                                       "index": tf.cast(i, tf.int32) + base},
                        num_parallel_calls=tf.data.AUTOTUNE)
            self._cache[key] = ds.cache()
        return self._cache[key]

    def _process_offset(self, split: str) -> int:
        """Global index of this process's first example (even_splits, no drop)."""
        n, k = self.num_examples(split), self.process_count
        return sum(n // k + (1 if p < n % k else 0) for p in range(self.process_index))

    def steps_per_epoch(self, split: str) -> int:
        """Global batches per epoch (drop_remainder), the same on every process."""
        steps = self.num_examples(split) // self.global_batch
        if steps == 0:
            raise UserError(f"split {split!r} has {self.num_examples(split)} examples, fewer than one "
                             f"global batch of {self.global_batch}; lower config.batch_size")
        return steps

    def _device_layout(self, batch: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        d = self.num_local_devices
        return {k: tf.reshape(v, [d, -1, *v.shape[1:]]) for k, v in batch.items()}

    def train_epoch(self, split: str, epoch: int, seed: int, start_step: int = 0) -> Iterator[Batch]:
        """This process's part of one epoch of shuffled global training batches,
        [devices, per_device, ...], from the `start_step`-th batch on (exact resume)."""
        local_batch = self.global_batch // self.process_count
        lo = self.process_index * local_batch
        ds = self._cached(split, whole=True)
        buffer = min(int(self.config.get("shuffle_buffer", 50_000)), self.num_examples(split))
        ds = ds.shuffle(buffer, seed=seed * 100_003 + epoch, reshuffle_each_iteration=False)
        ds = ds.batch(self.global_batch, drop_remainder=True).take(self.steps_per_epoch(split)).skip(start_step)
        if self.process_count > 1:
            ds = ds.map(lambda b: {k: v[lo:lo + local_batch] for k, v in b.items()})
        ds = ds.map(self._device_layout).prefetch(int(self.config.get("prefetch", 2)))
        return tfds.as_numpy(ds)

    def eval_batches(self, split: str) -> Iterator[Batch]:
        """Every example of `split` exactly once; padded examples carry mask 0."""
        local_batch = self.eval_global_batch // self.process_count
        n_max_local = math.ceil(self.num_examples(split) / self.process_count)
        num_batches = math.ceil(n_max_local / local_batch)
        ds = self._cached(split).batch(local_batch).prefetch(2)
        produced = 0
        for batch in tfds.as_numpy(ds):
            produced += 1
            yield self._pad_and_shard(batch, local_batch)
        for _ in range(num_batches - produced):  # processes with a smaller share
            yield self._pad_and_shard(None, local_batch)

    def _pad_and_shard(self, batch: Batch | None, local_batch: int) -> Batch:
        if batch is None:
            batch = {"image": np.zeros((0, self.size, self.size, 1), np.uint8),
                     "label": np.zeros((0,), np.int32), "index": np.zeros((0,), np.int32)}
        n = len(batch["label"])
        out = {k: np.concatenate([v, np.zeros((local_batch - n, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
        out["mask"] = (np.arange(local_batch) < n).astype(np.float32)
        d = self.num_local_devices
        return {k: v.reshape(d, local_batch // d, *v.shape[1:]) for k, v in out.items()}
