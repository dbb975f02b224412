import numpy as np
import pytest

from brainjax.data import phantom


def test_phantom_is_deterministic_and_varied():
    a = phantom.generate_slice(7, 3, 1, 64)
    b = phantom.generate_slice(7, 3, 1, 64)
    c = phantom.generate_slice(7, 4, 1, 64)
    assert a.shape == (64, 64, 1) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 5  # different anatomy per index


def test_phantom_classes_differ_from_no_tumor():
    """The same anatomy seed with and without a lesion differs where the lesion is."""
    labels = list(phantom.CLASS_NAMES)
    assert labels == ["glioma", "meningioma", "no_tumor", "pituitary"]
    for lab in (0, 1, 3):
        with_lesion = [phantom.generate_slice(1, i, lab, 128) for i in range(8)]
        assert all(img.std() > 20 for img in with_lesion)  # a head, not a blank image


def test_builder_counts_and_features(data_dir):
    import tensorflow_datasets as tfds

    builder = tfds.builder("brain_phantom/small", data_dir=data_dir)
    assert builder.info.splits["train"].num_examples == 800
    assert builder.info.splits["test"].num_examples == 120
    assert builder.info.features["label"].names == list(phantom.CLASS_NAMES)
    ex = next(iter(tfds.as_numpy(builder.as_dataset(split="train").take(1))))
    assert ex["image"].shape == (64, 64, 1) and ex["image"].dtype == np.uint8


def _pipeline(config, devices=8, process_index=0, process_count=1):
    from brainjax.data.pipeline import InputPipeline

    return InputPipeline(config, num_local_devices=devices, process_index=process_index, process_count=process_count)


def test_train_batches_shape_dtype_and_seeded_shuffle(smoke_config):
    p = _pipeline(smoke_config)
    epoch0 = list(p.train_epoch("train", 0, seed=0))
    assert len(epoch0) == 800 // 32 == p.steps_per_epoch("train")
    batch = epoch0[0]
    assert batch["image"].shape == (8, 4, 32, 32, 1) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (8, 4) and batch["label"].dtype == np.int32
    again = list(p.train_epoch("train", 0, seed=0))
    assert all((x["index"] == y["index"]).all() for x, y in zip(epoch0, again))  # reproducible
    epoch1 = list(p.train_epoch("train", 1, seed=0))
    assert any((x["index"] != y["index"]).any() for x, y in zip(epoch0, epoch1))  # reshuffled
    seen = np.concatenate([b["index"].ravel() for b in epoch0])
    assert len(set(seen.tolist())) == len(seen)  # drop_remainder, no repeats within an epoch


@pytest.mark.parametrize("eval_batch,process_count", [(48, 1), (16, 1), (40, 2), (24, 3)])
def test_eval_sees_every_example_exactly_once(smoke_config, eval_batch, process_count):
    smoke_config.eval_batch_size = eval_batch
    devices = 8 if eval_batch % (8 * process_count) == 0 else (4 if eval_batch % (4 * process_count) == 0 else 2)
    smoke_config.batch_size = smoke_config.input_shards = devices * process_count  # whole shards per process
    indices, counts = [], []
    for proc in range(process_count):
        p = _pipeline(smoke_config, devices, proc, process_count)
        batches = list(p.eval_batches("test"))
        counts.append(len(batches))
        for b in batches:
            assert b["image"].shape[:2] == (devices, eval_batch // process_count // devices)
            indices.extend(b["index"][b["mask"] > 0].ravel().tolist())
    assert len(set(counts)) == 1  # every process runs the same number of eval steps
    assert sorted(indices) == list(range(120))


def test_unreadable_files_are_one_line_naming_the_file(tmp_path):
    from brainjax.data import decode

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(decode.UnreadableImage, match="broken.jpg"):
        decode.read(str(bad))
    with pytest.raises(decode.UnreadableImage, match="missing.png: no such file"):
        decode.read(str(tmp_path / "missing.png"))
    from PIL import Image

    rgb = tmp_path / "ok.png"
    Image.fromarray(np.full((50, 70, 3), 200, np.uint8)).save(rgb)
    img = decode.model_input(decode.read(str(rgb)).slices[0].pixels, 32)
    assert img.shape == (32, 32, 1) and img.dtype == np.uint8 and abs(int(img.mean()) - 200) <= 1


def test_each_process_decodes_only_its_range_and_the_global_batches_do_not_depend_on_it(smoke_config):
    """P = 1, 2, 4 simulated processes (each pipeline built for its process index, as in
    a real run): every process decodes only its contiguous range of the split (counted in
    the decode op), and the concatenation of the processes' slices of each global batch
    is the same batch, same examples in the same order, for every P; one epoch covers
    disjoint examples."""
    smoke_config.batch_size = 32
    epochs = {}
    for count in (1, 2, 4):
        per_process = []
        for proc in range(count):
            p = _pipeline(smoke_config, 8 // count, proc, count)
            lo, hi = p.process_range("train")
            per_process.append([b["index"].reshape(-1) for b in p.train_epoch("train", 3, seed=1)])
            assert p.examples_decoded() == hi - lo == 800 // count
            assert all(((i >= lo) & (i < hi)).all() for i in per_process[-1])  # only its own examples
            again = [b["index"].reshape(-1) for b in p.train_epoch("train", 3, seed=1)]
            assert p.examples_decoded() == hi - lo  # the second pass reads the cache
            assert all((a == b).all() for a, b in zip(again, per_process[-1]))
        epochs[count] = [np.concatenate(parts) for parts in zip(*per_process)]
    assert len(epochs[1]) == 800 // 32
    for count in (2, 4):
        assert all((a == b).all() for a, b in zip(epochs[1], epochs[count])), count
    seen = np.concatenate(epochs[1])
    assert len(set(seen.tolist())) == len(seen)


def test_input_shards_that_do_not_fit_the_processes_or_the_batch_are_one_clear_error(smoke_config):
    from brainjax.errors import UserError

    smoke_config.input_shards = 6
    with pytest.raises(UserError, match=r"config.input_shards=6 must be a positive multiple of the process count \(4\)"):
        _pipeline(smoke_config, 2, 0, 4)
    with pytest.raises(UserError, match=r"config.batch_size=32 must be divisible by config.input_shards=6"):
        _pipeline(smoke_config, 2, 0, 2)
