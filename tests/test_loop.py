"""The one loop: TensorBoard events, device prefetch, metric windows."""

import json
import os

import numpy as np

from brainjax import parallel


def test_run_writes_tensorboard_events_matching_metrics_jsonl(one_epoch_run):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    workdir, _ = one_epoch_run  # read only
    acc = event_accumulator.EventAccumulator(os.path.join(workdir, "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])  # TF2 summaries: scalar tensors of the 'scalars' plugin

    def scalars(tag):
        return {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}

    assert {"train/loss", "train/accuracy", "val/loss", "val/accuracy", "learning_rate", "images_per_sec"} <= tags
    records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    windows = [r for r in records if r["kind"] == "train_window"]
    tb_loss = scalars("train/loss")
    assert sorted(tb_loss) == [r["step"] for r in windows]
    np.testing.assert_allclose([tb_loss[r["step"]] for r in windows], [r["loss"] for r in windows], rtol=1e-6)
    epochs = [r for r in records if r["kind"] == "epoch"]
    val = scalars("val/loss")
    np.testing.assert_allclose([val[r["step"]] for r in epochs], [r["val_loss"] for r in epochs], rtol=1e-6)
    assert acc.SummaryMetadata("val/loss").plugin_data.plugin_name == "scalars"


def test_prefetch_to_device_keeps_order_and_puts_batches_ahead():
    import jax

    produced = []

    def batches():
        for i in range(5):
            produced.append(i)
            yield {"x": np.full((jax.local_device_count(), 2), i, np.float32)}

    it = parallel.prefetch_to_device(batches(), size=2)
    first = next(it)
    assert produced == [0, 1, 2]  # two batches ahead of the one handed out
    assert isinstance(first["x"], jax.Array) and len(first["x"].addressable_shards) == jax.local_device_count()
    rest = [int(np.asarray(b["x"])[0, 0]) for b in it]
    assert [int(np.asarray(first["x"])[0, 0])] + rest == [0, 1, 2, 3, 4]
