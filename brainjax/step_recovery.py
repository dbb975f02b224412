"""Finding the newest readable checkpoint step, and never losing one on the way.

A step orbax positively reports as incomplete or corrupted (on any process) is renamed
`<step>.unreadable` by process 0 between two barriers and the previous step is tried; a
step holding another model, or any other error (flaky storage, memory, permissions, an
unknown message), stops with a `CheckpointError` and every file in place, the same
decision on every process. A step in a format an older brainjax wrote is one line.
Also the checks that read a run's checkpoints without opening a manager (`newest_meta`,
`has_steps`, `refuse_older_formats`), which preflight runs before any work.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable

from brainjax import parallel
from brainjax.errors import UserError
from brainjax.flat_tree import LayoutMismatch

log = logging.getLogger("brainjax")


# What orbax (and tensorstore beneath it) raises when a step's files are readable but
# hold another model: the config is wrong, not the checkpoint.
_MISMATCH_MARKERS = ("tree structures do not match", "shape mismatch", "Requested shape",
                     "does not match the shape", "incompatible shape")
# tensorstore status codes that positively say the stored bytes are missing or damaged
# (a truncated or partly deleted step), as opposed to UNAVAILABLE / UNKNOWN / INTERNAL or
# an OSError from the filesystem, which may be transient and say nothing about the files.
_CORRUPT_STATUS = ("DATA_LOSS:", "NOT_FOUND:", "OUT_OF_RANGE:")
_CORRUPT_PRECONDITION = ("truncated", "error decoding", "corrupt")

OK, CORRUPT, MISMATCH, ERROR = 0, 1, 2, 3  # restore outcomes, worst last


def classify_restore_error(err: BaseException) -> int:
    """CORRUPT only where orbax / tensorstore positively report a step's files as
    incomplete or damaged; MISMATCH where they hold another model; ERROR for anything
    else (an I/O error, MemoryError, permissions, an unknown message): that says nothing
    about the files, so they must be left alone."""
    text = str(err)
    lower = text.lower()
    if isinstance(err, LayoutMismatch):
        return MISMATCH
    if any(marker.lower() in lower for marker in _MISMATCH_MARKERS):
        return MISMATCH
    if isinstance(err, json.JSONDecodeError):  # a metadata file cut short
        return CORRUPT
    if isinstance(err, FileNotFoundError):  # a file of the committed step is missing
        return CORRUPT
    if isinstance(err, KeyError) and "was not found in the checkpoint" in text:  # an item directory is missing
        return CORRUPT
    if isinstance(err, ValueError):
        if any(code in text for code in _CORRUPT_STATUS):
            return CORRUPT
        if "FAILED_PRECONDITION:" in text and any(m in lower for m in _CORRUPT_PRECONDITION):
            return CORRUPT
    return ERROR


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:240]}" if text else type(err).__name__


class CheckpointError(UserError):
    """A checkpoint could not be restored and nothing was changed on disk."""


def newest_meta(workdir: str) -> tuple[int, dict] | None:
    """(step, meta JSON) of the newest committed step whose meta item reads, without
    opening a manager (which would create the folder): what the resume check compares a
    config with before any work. None when there is no such step (no checkpoints, or
    only the earlier formats, which carry no run record)."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return None
    for step in sorted((int(d) for d in os.listdir(directory) if d.isdigit()), reverse=True):
        try:
            with open(os.path.join(directory, str(step), "meta", "metadata")) as f:
                return step, json.load(f)
        except (OSError, ValueError):
            continue  # unreadable or another format: restore decides what to do with it
    return None


def has_steps(workdir: str) -> bool:
    """Whether <workdir>/checkpoints holds a committed step of any format."""
    directory = os.path.join(workdir, "checkpoints")
    return os.path.isdir(directory) and any(d.isdigit() for d in os.listdir(directory))


# Items of the step formats earlier versions wrote (four items; a tree per item).
OLDER_FORMAT_ITEMS = ("layout", "state_flat", "best_flat", "state", "best", "loop")


def refuse_older_formats(workdir: str) -> None:
    """A step written by an older brainjax (four items, or one orbax array per leaf) is
    one line saying so (before any work: preflight calls this too), never read as if it
    were corrupt."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return
    for name in sorted(d for d in os.listdir(directory) if d.isdigit()):
        step_dir = os.path.join(directory, name)
        if not os.path.isdir(os.path.join(step_dir, "meta")) and any(
                os.path.isdir(os.path.join(step_dir, item)) for item in OLDER_FORMAT_ITEMS):
            raise CheckpointError(
                f"checkpoint {step_dir} was written by an older brainjax (before checkpoints held two items, "
                "'flat' and 'meta'); this version does not read it. Re-train in a new --workdir, or evaluate and "
                "export it with the brainjax version that wrote it. No file was changed.")




class StepRecovery:
    """The restore scan over one manager's steps (see the module docstring)."""

    def __init__(self, manager: Any, directory: str):
        self.manager, self.directory = manager, directory

    def restore_newest(self, read: Callable[[int], Any]) -> tuple[int, Any] | None:
        """(step, read(step)) of the newest readable step, the same one on every process;
        None without steps. Nothing is ever deleted; a directory whose steps are all
        unreadable is a CheckpointError (never a silent fresh start)."""
        refuse_older_formats(os.path.dirname(self.directory))
        set_aside = self.set_aside_steps()
        for step in sorted(self.manager.all_steps(), reverse=True):
            restored, outcome, detail = None, OK, ""
            try:
                restored = read(step)
            except Exception as err:  # noqa: BLE001  (orbax raises many types; classified below)
                outcome, detail = classify_restore_error(err), first_line(err)
            outcomes = parallel.all_process_values(outcome)
            worst = max(outcomes)
            path = os.path.join(self.directory, str(step))
            if worst == OK:
                return step, restored
            if worst in (MISMATCH, ERROR):
                raise self.stop_error(step, path, worst, where(outcomes, worst), detail)
            set_aside.append(self.set_aside(step, path, detail or "unreadable on another process"))
        if set_aside:
            raise CheckpointError(
                f"no readable checkpoint in {self.directory}: every step is unreadable and set aside "
                f"({', '.join(os.path.basename(p) for p in set_aside)}). Nothing was deleted and training did not "
                "start from scratch over them; restore them from a backup, or train in a new --workdir.")
        return None

    def stop_error(self, step: int, path: str, worst: int, where_text: str, detail: str) -> CheckpointError:
        """The one line for a step that holds another model (MISMATCH) or could not be
        read for a reason that says nothing about its files (ERROR)."""
        if worst == MISMATCH:
            return CheckpointError(
                f"checkpoint {path} holds a different model than this config builds"
                f"{where_text} ({detail or 'see the log of the process named'}); use the config the run was "
                f"trained with (saved as {os.path.join(os.path.dirname(self.directory), 'config.json')}), "
                "with the same --config.* overrides. No checkpoint file was changed.")
        return CheckpointError(
            f"could not read checkpoint step {step} ({path}){where_text}: {detail or 'see that process log'}. "
            "No checkpoint file was changed or removed; fix the cause (storage, memory, permissions) and "
            "rerun the same command to resume from it.")

    def set_aside_steps(self) -> list[str]:
        """Step directories an earlier run renamed to `<step>.unreadable[.N]`."""
        if not os.path.isdir(self.directory):
            return []
        return sorted(os.path.join(self.directory, d) for d in os.listdir(self.directory) if ".unreadable" in d)

    def set_aside(self, step: int, path: str, detail: str) -> str:
        """Renames the unreadable step `path` to `<step>.unreadable` (process 0, between
        barriers, so no process is still reading it and all see the rename after)."""
        target = path + ".unreadable"
        n = 1
        while os.path.exists(target):
            target = f"{path}.unreadable.{n}"
            n += 1
        parallel.sync(f"checkpoint_set_aside_{step}:before")
        if parallel.is_main_process():
            os.rename(path, target)
        parallel.sync(f"checkpoint_set_aside_{step}:after")
        log.warning("checkpoint step %d (%s) is unreadable (%s); set aside as %s and using the previous step",
                    step, path, detail, target)
        self.manager.reload()
        return target


def where(outcomes: list[int], worst: int) -> str:
    """' on process(es) i, j' naming the processes with the worst outcome (several)."""
    if len(outcomes) == 1:
        return ""
    failing = [i for i, o in enumerate(outcomes) if o == worst]
    return f" on process{'es' if len(failing) > 1 else ''} {', '.join(map(str, failing))}"
