"""Metric writers (process 0 only): metrics.jsonl and TensorBoard events in <workdir>/tb/.

The loop hands every record to every writer. Records carry the global optimizer step, and
every start calls `truncate_after(step)` with the step it starts from (0 for a fresh
start), so what a killed run wrote past its last checkpoint, a torn last line included,
is dropped and metrics.jsonl never holds a record twice (TensorBoard purges the orphaned
steps itself when a step goes back).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping, Protocol, Sequence

from brainjax import files, parallel

log = logging.getLogger("brainjax")

# TensorBoard tag of each record field, by record kind.
_TB_TAGS = {
    "train_window": {"loss": "train/loss", "accuracy": "train/accuracy"},
    "epoch": {"loss": "epoch/train_loss", "accuracy": "epoch/train_accuracy", "val_loss": "val/loss",
              "val_accuracy": "val/accuracy", "learning_rate": "learning_rate",
              "images_per_sec": "images_per_sec"},
}


class Writer(Protocol):
    def write(self, record: Mapping[str, Any]) -> None: ...
    def truncate_after(self, step: int) -> None: ...
    def close(self) -> None: ...


class JsonlWriter:
    """JSON lines in <workdir>/metrics.jsonl."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = parallel.is_main_process()

    def write(self, record: Mapping[str, Any]) -> None:
        if self.enabled:
            files.append_text(self.path, json.dumps(dict(record)) + "\n")

    def truncate_after(self, step: int) -> None:
        """Keeps only records at or before `step` (the checkpoint a resumed run starts
        from). A last line cut short by a kill during its append is dropped with a
        warning; an unparseable line elsewhere is kept as it is (it is not ours to judge)."""
        if not (self.enabled and os.path.exists(self.path)):
            return
        with open(self.path) as f:
            lines = [l for l in f if l.strip()]
        kept = []
        for i, line in enumerate(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    log.warning("%s: dropping a torn last line (a run killed while writing it): %r",
                                self.path, line[:80])
                else:
                    kept.append(line)
                continue
            if not isinstance(record, dict) or record.get("step", 0) <= step:
                kept.append(line)
        if kept != lines:
            files.write_text(self.path, "".join(l if l.endswith("\n") else l + "\n" for l in kept))

    def close(self) -> None:
        pass


class TensorBoardWriter:
    """Scalars for `tensorboard --logdir <workdir>/tb` (tf.summary; skipped with a
    warning where TensorFlow is not installed, e.g. a bare GPU machine)."""

    def __init__(self, workdir: str):
        self.writer = None
        if not parallel.is_main_process():
            return
        try:
            import tensorflow as tf
        except ImportError:
            log.warning("TensorFlow is not installed: no TensorBoard events (metrics.jsonl is still written)")
            return
        self._tf = tf
        self.writer = tf.summary.create_file_writer(os.path.join(workdir, "tb"))

    def write(self, record: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        tags = _TB_TAGS.get(record.get("kind"), {})
        with self.writer.as_default():
            for field, tag in tags.items():
                if record.get(field) is not None:
                    self._tf.summary.scalar(tag, float(record[field]), step=int(record["step"]))
        self.writer.flush()

    def truncate_after(self, step: int) -> None:
        del step  # TensorBoard drops orphaned steps when it sees a step go back

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Writers:
    """Fans each record out to several writers."""

    def __init__(self, writers: Sequence[Writer]):
        self.writers = list(writers)

    def write(self, **record: Any) -> None:
        for w in self.writers:
            w.write(record)

    def truncate_after(self, step: int) -> None:
        for w in self.writers:
            w.truncate_after(step)

    def close(self) -> None:
        for w in self.writers:
            w.close()


def default_writers(workdir: str) -> Writers:
    """metrics.jsonl + TensorBoard."""
    return Writers([JsonlWriter(workdir), TensorBoardWriter(workdir)])
