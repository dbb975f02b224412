"""tf.data input pipeline (big_vision / scenic order).

  this process's contiguous range of the split (a tfds read instruction: nothing else is
  read or decoded) -> decode (tfds) -> grayscale -> resize to config.image_size
  -> uint8 [H, W, 1] -> cache (decoded, resized, uint8: ~H*W bytes per example)
  -> train: the split is cut into `config.input_shards` (V) contiguous shards, a fixed
     number independent of the process count; process p owns shards
     [p*V/P, (p+1)*V/P). Every shard is shuffled per epoch (seeded by (seed, epoch,
     shard), the same whatever process owns it) and batched into sub-batches of
     global_batch/V (drop_remainder); global batch b is the concatenation of every
     shard's b-th sub-batch, in shard order. This process's slice of it is the
     concatenation of its own shards' sub-batches -> skip the batches a resumed run
     already took -> [local_devices, per_device_batch, H, W, 1]
  -> eval: the same per-process range -> batch -> pad the last batch with mask=0 ->
     same layout; every example of the split is seen exactly once, whatever the batch
     size or the number of processes
  -> prefetch.

So P processes x D devices see exactly the examples, order and per-example keys
(folded from the global index) of 1 process x P*D devices, the model does not depend
on the layout, and each process decodes and caches 1/P of every split.

The host ships uint8 one-channel images; float conversion, degradation, channel
replication and backbone preprocessing run on device.
"""

from __future__ import annotations

from brainjax.errors import UserError

import dataclasses
import math
import os
from typing import Any, Iterator, Mapping

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

tf.config.set_visible_devices([], "GPU")  # tf.data only: keep TensorFlow off the accelerators JAX uses

import brainjax.data.builders  # noqa: F401  (registers the builders)
from brainjax import parallel
from brainjax.data import decode, image_folder, kaggle, multi_source

Batch = dict[str, np.ndarray]


def host_gray_resized(image: np.ndarray, size: int) -> np.ndarray:
    """A stored example (uint8 [H, W, 1|3|4], or a wider dtype) -> uint8 [size, size, 1]
    by the decoder's rules (`decode.to_uint8`, `decode.as_gray`, `decode.resize`): the
    resize --mode=predict uses too."""
    return decode.resize(decode.as_gray(decode.to_uint8(np.asarray(image))), size)[..., None]


def to_gray_resized(image: tf.Tensor, size: int) -> tf.Tensor:
    """`host_gray_resized` inside tf.data (run once per example: it comes before the cache)."""
    out = tf.numpy_function(lambda x: host_gray_resized(x, size), [image], tf.uint8, stateful=False)
    return tf.ensure_shape(out, (size, size, 1))


def dataset_builder(name: str, data_dir: str | None, manual_dir: str | None, *, class_map: Any = None,
                    test_fraction: float = 0.2, slice_axis: str = "axial",
                    min_foreground: float = decode.MIN_FOREGROUND):
    """The tfds builder of `config.dataset` (not built yet); for `image_folder`, the config of
    that folder. Unknown names are UserErrors."""
    if name.split("/")[0] == "image_folder":
        cfg = image_folder.folder_config(manual_dir, class_map, test_fraction=test_fraction, slice_axis=slice_axis,
                                         min_foreground=min_foreground)
        return image_folder.ImageFolder(config=cfg, data_dir=data_dir)
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise UserError(f"unknown dataset {name!r} (config.dataset): {str(err).splitlines()[0]}") from None
    except ValueError:  # a known dataset without that config: 'brain_phantom/nope'
        base = name.split("/")[0]
        known = [c.name for c in getattr(tfds.builder_cls(base), "BUILDER_CONFIGS", [])]
        raise UserError(f"unknown dataset {name!r} (config.dataset): {base} has no config "
                        f"{name.split('/', 1)[-1]!r} (its configs: {', '.join(known)})") from None


def _manual_folder(manual_dir: str | None) -> str | None:
    """manual_dir as tfds wants it: a folder (a zip's folder), absolute."""
    if manual_dir and os.path.isfile(manual_dir) and manual_dir.lower().endswith(".zip"):
        manual_dir = os.path.dirname(os.path.abspath(manual_dir))  # tfds wants a folder; the zip is found in it
    return os.path.abspath(os.path.expanduser(manual_dir)) if manual_dir else manual_dir


def source_builder(source: Mapping[str, Any], config: Mapping[str, Any], make: Any):
    """`make` (checked_builder or builder_for) on one source's dataset fields; its
    errors name the source."""
    try:
        return make(multi_source.source_fields(source, config))
    except UserError as err:
        raise UserError(f"config.sources[{source['name']}]: {err}") from None


def sources_builder(config: Mapping[str, Any], prepare: bool):
    """The `multi_source` builder of config.sources (built, with `prepare`: each source
    first, by its own builder, then the mixed dataset; a mixed build already made needs
    no source build)."""
    sources = multi_source.source_list(config)
    holdout = str(config["holdout_source"])
    builders = {s["name"]: source_builder(s, config, checked_builder) for s in sources}
    builder = multi_source.MultiSource(config=multi_source.multi_config(sources, builders, holdout),
                                       data_dir=config.get("data_dir"))
    if not prepare or builder.is_prepared():
        return builder
    builders = {s["name"]: source_builder(s, config, builder_for) for s in sources}
    builder.source_builders = builders
    builder.download_and_prepare()
    return builder


def checked_builder(config: Mapping[str, Any]):
    """The builder of `config.dataset` (of config.sources when it names sources), not
    built, after every check that needs no build: a known name, the download source, and,
    where the builder needs manual data and is not built yet, a manual_dir that holds
    something. Raises UserError."""
    if config.get("sources"):
        return sources_builder(config, prepare=False)
    name, manual_dir, download = config.get("dataset"), config.get("manual_dir"), config.get("download") or ""
    if download:
        kaggle.check(download, name, manual_dir)
    builder = dataset_builder(name, config.get("data_dir"), manual_dir, class_map=config.get("class_map"),
                              test_fraction=float(config["test_fraction"]),
                              slice_axis=str(config["slice_axis"]),
                              min_foreground=float(config["volume_min_foreground"]))
    if download or builder.is_prepared():
        return builder
    folder = _manual_folder(manual_dir)
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None) and not (folder and os.path.isdir(folder)):
        raise UserError(f"dataset {name} must be built from a local copy: set config.manual_dir "
                        f"(now {folder!r}, which is not a folder).\n{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    if folder and os.path.isdir(folder) and not os.listdir(folder):
        raise UserError(f"config.manual_dir {folder} is empty: expected the dataset folder (with "
                        f"Training/ and Testing/) or its zip.\n{getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', '')}")
    return builder


def builder_for(config: Mapping[str, Any]):
    """The dataset of a run config, built if needed (after `config.download` fetched the
    files into manual_dir); unknown names and missing manual data are UserErrors."""
    if config.get("sources"):
        return sources_builder(config, prepare=True)
    builder = checked_builder(config)
    if config.get("download"):
        kaggle.fetch(config.get("download"), config.get("dataset"), config.get("manual_dir"))
        builder = checked_builder({k: config.get(k) for k in DATASET_FIELDS if k != "download"})
    manual_dir = _manual_folder(config.get("manual_dir"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


DATASET_FIELDS = ("dataset", "data_dir", "manual_dir", "class_map", "test_fraction", "download", "slice_axis",
                  "volume_min_foreground")


def prepared_builder(name: str, data_dir: str | None, manual_dir: str | None, *, class_map: Any = None,
                     test_fraction: float = 0.2, download: str = ""):
    """`builder_for` with the dataset fields given one by one."""
    return builder_for(dict(dataset=name, data_dir=data_dir, manual_dir=manual_dir, class_map=class_map,
                            test_fraction=test_fraction, download=download, slice_axis="axial",
                            volume_min_foreground=decode.MIN_FOREGROUND))


def prepare_dataset(config: Mapping[str, Any]) -> None:
    """Builds the configured tfds dataset if it is not built yet (run by process 0 first;
    see `brainjax.parallel.process_zero_first`)."""
    builder_for(config)


def shard_bounds(n: int, parts: int) -> list[int]:
    """Boundaries of `parts` contiguous, near-equal ranges of n examples: range i is
    [bounds[i], bounds[i + 1]). The same function cuts processes and input shards, so
    with V a multiple of P every process range is a union of whole shards."""
    return [(i * n) // parts for i in range(parts + 1)]


def iterator_options() -> tf.data.Options:
    """Options for the datasets iterated once per epoch or evaluation: tf.data's autotuner
    off. Each of those iterators otherwise owns an autotuning thread, and destroying the
    iterator at the end of its epoch waits for that thread; on the 2-core machine that
    wait took 14-20 s with the process idle, in about one epoch in three of the
    jit-mode loop (py-spy showed the main thread in
    `RootDataset::Iterator::~Iterator`). These pipelines tune nothing: their prefetch
    depth is fixed, and the decode map's AUTOTUNE parallelism (used only when a split is
    read before its cache is filled) takes tf.data's untuned default."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def check_layout(config: Mapping[str, Any], num_devices: int, process_count: int) -> None:
    """Batch sizes divisible by the devices; input shards a positive multiple of the
    process count and a divisor of the batch (`preflight` runs it before any work)."""
    for name in ("batch_size", "eval_batch_size"):
        value = int(config[name])
        if value < 1 or value % num_devices:
            raise UserError(f"config.{name}={value} must be divisible by the number of devices ({num_devices})")
    shards = int(config["input_shards"])
    if shards < 1 or shards % process_count:
        raise UserError(f"config.input_shards={shards} must be a positive multiple of the process count "
                        f"({process_count}): each process reads whole shards. Set --config.input_shards to a "
                        f"multiple of {process_count} (the training order depends on it, not on the process count)")
    if int(config["batch_size"]) % shards:
        raise UserError(f"config.batch_size={config.get('batch_size')} must be divisible by config.input_shards="
                        f"{shards} (every global batch takes the same number of examples from each shard); change "
                        "one of them")


def source_draw(config: Mapping[str, Any], builder: Any, source_names: list[str]) -> np.ndarray | None:
    """Per source, how many times each training example is drawn per epoch on average,
    so that source s fills weight_s / sum(weights) of the epoch (the training sources'
    weights); None when those shares are the sources' own shares of the split (nothing
    to resample: a one-source run, or weights proportional to size)."""
    if not source_names:
        return None
    counts = builder.build_report().get("splits", {}).get("train", {}).get("per_source") or source_counts(builder)
    weights = {s["name"]: float(s["weight"]) for s in multi_source.source_list(config)}
    n = np.array([counts.get(name, 0) for name in source_names], np.float64)
    w = np.array([weights[name] if counts.get(name, 0) else 0.0 for name in source_names])
    if not n.sum() or not w.sum():
        return None
    share, natural = w / w.sum(), n / n.sum()
    if np.allclose(share, natural, rtol=0, atol=1e-9):
        return None
    return np.where(n > 0, share / np.maximum(natural, 1e-12), 0.0)


def source_counts(builder: Any, split: str = "train") -> dict[str, int]:
    """{source: examples} of a multi-source split, counted from its records (images not
    decoded): for a build whose build_report.json is not beside it."""
    names = builder.info.features["source"].names
    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    found = np.bincount([int(ex["source"]) for ex in tfds.as_numpy(ds)], minlength=len(names))
    return {name: int(n) for name, n in zip(names, found)}


def weighted_draw(ds: tf.data.Dataset, repeats: np.ndarray, seed: int, epoch: int) -> tf.data.Dataset:
    """Each example repeated floor(r) or floor(r) + 1 times (r: its source's repeat factor,
    the extra copy with probability frac(r)), drawn from (seed, epoch, the example's
    global index): the same whatever process or device reads it."""
    table = tf.constant(repeats, tf.float64)

    def copies(ex):
        r = tf.gather(table, ex["source"])
        u = tf.random.stateless_uniform([], seed=tf.stack([tf.cast(seed * 100_003 + epoch, tf.int64),
                                                          tf.cast(ex["index"], tf.int64)]), dtype=tf.float64)
        return tf.cast(tf.floor(r) + tf.cast(u < r - tf.floor(r), tf.float64), tf.int64)

    return ds.flat_map(lambda ex: tf.data.Dataset.from_tensors(ex).repeat(copies(ex)))


class SplitCache:
    """Reading and caching: this process's contiguous range of each split, read with a
    tfds instruction that reads nothing else, decoded and resized once, cached in memory,
    each example with its global index (and its source, for a multi-source dataset)."""

    def __init__(self, builder: Any, size: int, process_index: int, process_count: int):
        self.builder, self.size = builder, size
        self.process_index, self.process_count = process_index, process_count
        self.with_source = "source" in builder.info.features
        self._cache: dict[str, tf.data.Dataset] = {}
        self._filled: set[str] = set()
        self.decoded = tf.Variable(0, dtype=tf.int64, trainable=False)  # examples decoded by this process

    def num_examples(self, split: str) -> int:
        return int(self.builder.info.splits[split].num_examples)

    def process_range(self, split: str) -> tuple[int, int]:
        """[lo, hi): the global indices of `split` this process reads."""
        bounds = shard_bounds(self.num_examples(split), self.process_count)
        return bounds[self.process_index], bounds[self.process_index + 1]

    def read_instruction(self, split: str, lo: int, hi: int) -> tuple[str, int]:
        """(tfds split string, examples to skip) that read examples [lo, hi) of `split`
        and nothing before them; the caller takes hi - lo. A one-range spec reads exactly
        that range (at least one example: tfds rejects empty ranges); a combined one
        (`train+test`) is read whole and skipped up to lo."""
        instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(self.builder.info.splits)
        if len(instructions) != 1:
            return split, lo
        base, start = instructions[0].splitname, int(instructions[0].from_ or 0)
        return f"{base}[{start + lo}:{start + max(hi, lo + 1)}]", 0

    def cached(self, split: str) -> tf.data.Dataset:
        """This process's range of `split`, decoded and resized, cached in memory."""
        if split not in self._cache:
            lo, hi = self.process_range(split)
            read, skip = self.read_instruction(split, lo, hi)
            ds = self.builder.as_dataset(split=read, shuffle_files=False, read_config=tfds.ReadConfig(add_tfds_id=False))
            ds = ds.skip(skip).take(hi - lo).enumerate()  # position within this process's range
            size, counter, with_source = self.size, self.decoded, self.with_source

            def decode(i, ex):
                with tf.control_dependencies([counter.assign_add(1)]):
                    out = {"image": to_gray_resized(ex["image"], size), "label": tf.cast(ex["label"], tf.int32),
                           "index": tf.cast(i, tf.int32) + lo}
                    if with_source:
                        out["source"] = tf.cast(ex["source"], tf.int32)
                    return out

            self._cache[split] = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE).cache()
        return self._cache[split]

    def filled(self, split: str) -> tf.data.Dataset:
        """`cached(split)` read through once, so that the per-shard views taken from it
        (skip/take) read memory instead of each decoding the files again."""
        ds = self.cached(split)
        if split not in self._filled:
            for _ in ds:
                pass
            self._filled.add(split)
        return ds

    def empty_batch(self) -> Batch:
        """A batch of no examples, with every key a real one has."""
        return {"image": np.zeros((0, self.size, self.size, 1), np.uint8), "label": np.zeros((0,), np.int32),
                "index": np.zeros((0,), np.int32), **({"source": np.zeros((0,), np.int32)} if self.with_source else {})}


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """The training order's parameters: V input shards over the split, sub-batches of
    global_batch / V, `steps` batches per epoch, the shuffle buffer, the source draw."""
    shards: int
    sub_batch: int
    steps: int
    shuffle_buffer: int
    draw: np.ndarray | None


def shard_epoch(ds: tf.data.Dataset, a: int, b: int, shard: int, plan: EpochPlan, seed: int,
                epoch: int) -> tf.data.Dataset:
    """One input shard's sub-batches of one epoch: examples [a, b) of the process's cached
    range, drawn by source weight (if any), shuffled by (seed, epoch, shard) whatever
    process reads it, batched with drop_remainder, `steps` of them."""
    part = ds.skip(a).take(b - a)
    if plan.draw is not None:
        part = weighted_draw(part, plan.draw, seed, epoch)
    part = part.shuffle(max(min(plan.shuffle_buffer, b - a), 1), seed=(seed * 100_003 + epoch) * 4_099 + shard,
                        reshuffle_each_iteration=False)
    if plan.draw is not None:
        part = part.repeat()  # a drawn shard may be shorter than the epoch's share
    return part.batch(plan.sub_batch, drop_remainder=True).take(plan.steps)


def pad_batch(batch: Batch, local_batch: int) -> Batch:
    """An eval batch padded to `local_batch` rows, with mask 1 on the real ones."""
    n = len(batch["label"])
    out = {k: np.concatenate([v, np.zeros((local_batch - n, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
    out["mask"] = (np.arange(local_batch) < n).astype(np.float32)
    return out


class InputPipeline:
    """Train/eval iterators over one tfds dataset, sharded over processes and devices."""

    def __init__(self, config: Mapping[str, Any], *, num_local_devices: int, process_index: int = 0,
                 process_count: int = 1):
        self.config = config
        self.num_local_devices = num_local_devices
        self.process_index, self.process_count = process_index, process_count
        self.builder = builder_for(config)
        self.class_names: list[str] = list(self.builder.info.features["label"].names)
        features = self.builder.info.features
        self.source_names: list[str] = list(features["source"].names) if "source" in features else []
        self.draw = source_draw(config, self.builder, self.source_names)
        self.splits = SplitCache(self.builder, int(config.image_size), process_index, process_count)
        self.global_batch = int(config.batch_size)
        self.eval_global_batch = int(config["eval_batch_size"])
        check_layout(config, num_local_devices * process_count, process_count)
        self.input_shards = int(config["input_shards"])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def num_examples(self, split: str) -> int:
        return self.splits.num_examples(split)

    def process_range(self, split: str) -> tuple[int, int]:
        """[lo, hi): the global indices of `split` this process reads."""
        return self.splits.process_range(split)

    def examples_decoded(self) -> int:
        """Examples this process has decoded so far (all splits): a count kept by the
        decode step itself, for the scale-out benchmark and tests."""
        return int(self.splits.decoded.numpy())

    def steps_per_epoch(self, split: str) -> int:
        """Global batches per epoch (drop_remainder in every shard), the same on every
        process."""
        n, v = self.num_examples(split), self.input_shards
        steps = (n // v) // (self.global_batch // v)
        if steps == 0:
            raise UserError(f"split {split!r} has {n} examples, fewer than one global batch of "
                             f"{self.global_batch} (or than batch_size/input_shards per input shard); lower "
                             "config.batch_size or config.input_shards")
        return steps

    def train_epoch(self, split: str, epoch: int, seed: int, start_step: int = 0) -> Iterator[Batch]:
        """This process's part of one epoch of shuffled global training batches,
        [devices, per_device, ...], from the `start_step`-th batch on (exact resume):
        global batch b is every shard's b-th sub-batch in shard order; this process
        contributes its own shards'."""
        v, p, count = self.input_shards, self.process_index, self.process_count
        bounds = shard_bounds(self.num_examples(split), v)
        lo, _ = self.process_range(split)
        ds = self.splits.filled(split)
        plan = EpochPlan(v, self.global_batch // v, self.steps_per_epoch(split), int(self.config.shuffle_buffer),
                         self.draw if split == self.config.train_split else None)
        parts = [shard_epoch(ds, bounds[shard] - lo, bounds[shard + 1] - lo, shard, plan, seed, epoch)
                 for shard in range(p * v // count, (p + 1) * v // count)]
        ds = tf.data.Dataset.zip(tuple(parts)).map(
            lambda *subs: {k: tf.concat([s[k] for s in subs], axis=0) for k in subs[0]})
        ds = ds.skip(start_step).prefetch(int(self.config.prefetch)).with_options(iterator_options())
        return (parallel.device_rows(batch, self.num_local_devices) for batch in tfds.as_numpy(ds))

    def eval_batches(self, split: str) -> Iterator[Batch]:
        """Every example of `split` exactly once; padded examples carry mask 0."""
        local_batch = self.eval_global_batch // self.process_count
        n_max_local = math.ceil(self.num_examples(split) / self.process_count)
        num_batches = math.ceil(n_max_local / local_batch)
        ds = self.splits.cached(split).batch(local_batch).prefetch(2).with_options(iterator_options())
        produced = 0
        for batch in tfds.as_numpy(ds):
            produced += 1
            yield parallel.device_rows(pad_batch(batch, local_batch), self.num_local_devices)
        for _ in range(num_batches - produced):  # processes with a smaller share
            yield parallel.device_rows(pad_batch(self.splits.empty_batch(), local_batch), self.num_local_devices)
