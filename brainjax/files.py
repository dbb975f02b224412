"""The one writer: every file brainjax writes, and every path it removes, goes through here
(and the JSON files it reads back, with one clear line when they are malformed).

Two rules (README, "Your files are safe"):

1. Atomic. A file is written to a temporary name beside its target (same folder, so the
   rename cannot cross filesystems), then renamed into place: a kill at any moment leaves
   the old file or the new one, never part of one.
2. Never another's file. An existing path is replaced only when this process created it
   in this run, or when it lies in a folder brainjax owns: a run directory (`own`, after
   `preflight` found it new, or a brainjax run, or empty) or a tfds build folder of a
   brainjax builder. Anything else is a `UserError` naming the path, raised before the
   write. Removal is only of paths this process created (its temporary files and
   folders), and, for `export --overwrite`, of a previous export recognised by its
   sidecar (`replace_path`).

The registry is per process and in memory: nothing is written to mark ownership.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterable, Sequence

from brainjax.errors import UserError

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: files get the permissions an ordinary open() would give them
_created: set[str] = set()  # real paths this process created
_owned: set[str] = set()  # folders whose contents brainjax may replace


def _key(path: str) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(str(path))))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def own(folder: str) -> None:
    """Marks `folder` as brainjax's: its files may be replaced (a checked run directory)."""
    _owned.add(_key(folder))


def created_here(path: str) -> bool:
    """True when this process created `path` (or a folder above it) in this run."""
    key = _key(path)
    return any(_inside(key, c) for c in _created)


def may_replace(path: str) -> bool:
    """Whether brainjax may replace the existing `path`: created in this run, or inside a
    folder it owns."""
    key = _key(path)
    return created_here(path) or any(_inside(key, folder) for folder in _owned)


def check_replaceable(path: str, what: str = "") -> None:
    """A UserError naming `path` when it exists and brainjax may not replace it."""
    if os.path.lexists(path) and not may_replace(path):
        raise UserError(f"{what + ' ' if what else ''}{path} exists and brainjax did not write it; brainjax never "
                        "overwrites a file it did not write: move it away or choose another path")


def read_json(path: str, what: str) -> Any:
    """A JSON file brainjax reads (calibration.json, report.json, a reference report), or
    one UserError line naming it when it cannot be read as JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise UserError(f"{path} could not be read as {what} ({type(err).__name__}: {str(err)[:120]}); restore "
                        "it, or rerun the mode that writes it") from None


def can_write_in(folder: str) -> bool:
    """Whether a file can really be created in `folder` (a probe file, removed at once:
    permission bits alone say nothing for root or on a read-only filesystem)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".brainjax-probe-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def make_dirs(path: str) -> str:
    """os.makedirs, recording every level it creates as this run's."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    missing = []
    head = path
    while head and not os.path.exists(head):
        missing.append(head)
        head = os.path.dirname(head)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{path} is a file, not a folder; choose another path")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the folder {path} ({err.strerror or err}); choose a writable path") from None
    _created.update(_key(p) for p in missing)
    return path


def temp_path(target: str) -> str:
    """A new temporary file name beside `target`, with its extension (savefig and
    np.savez choose the format by it); recorded as this run's."""
    folder, name = os.path.split(os.path.abspath(target))
    stem, ext = os.path.splitext(name)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600
    _created.add(_key(tmp))
    return tmp


def temp_dir(parent: str, prefix: str) -> str:
    """A new temporary folder in `parent`, recorded as this run's."""
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    _created.add(_key(path))
    return path


def write_with(path: str, write: Callable[[str], Any], previous: Callable[[str], bool] | None = None) -> str:
    """Calls `write(tmp)` to write a temporary file beside `path`, then renames it into
    place; refuses (before writing) to replace a file brainjax may not replace, and never
    replaces a folder. `previous(path)`: True for an earlier output of the same kind
    (e.g. a benchmark's own JSON), which may be replaced wherever it lies. The temporary
    file is removed if `write` fails."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder; brainjax writes a file there only where none exists")
    if not (previous is not None and os.path.isfile(path) and previous(path)):
        check_replaceable(path)
    make_dirs(os.path.dirname(path))
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise
    _created.add(_key(path))
    return path


def write_bytes(path: str, data: bytes, previous: Callable[[str], bool] | None = None) -> str:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return write_with(path, write, previous)


def write_chunks(path: str, chunks: Iterable[bytes]) -> str:
    """Like write_bytes, for a stream (a download): the target appears only when complete."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)

    return write_with(path, write)


def write_text(path: str, text: str, previous: Callable[[str], bool] | None = None) -> str:
    return write_bytes(path, text.encode("utf-8"), previous)


def write_json(path: str, obj: Any, indent: int | None = 2, previous: Callable[[str], bool] | None = None) -> str:
    return write_text(path, json.dumps(obj, indent=indent), previous)


def write_figure(path: str, fig: Any, dpi: int) -> str:
    """A matplotlib figure as PNG."""
    return write_with(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))


def write_npz(path: str, arrays: dict) -> str:
    """numpy arrays as one .npz file."""
    import numpy as np

    return write_with(path, lambda tmp: np.savez(tmp, **arrays))


def json_with_keys(*keys: str) -> Callable[[str], bool]:
    """A `previous` predicate: a JSON object file holding all of `keys`."""
    def recognise(path: str) -> bool:
        try:
            with open(path) as f:
                record = json.load(f)
        except (OSError, ValueError):
            return False
        return isinstance(record, dict) and all(k in record for k in keys)

    return recognise


def append_text(path: str, text: str) -> None:
    """Appends to a file brainjax may write (metrics.jsonl): a kill may leave a torn last
    line, which the next start cuts back (`writers.JsonlWriter.truncate_after`)."""
    if not os.path.exists(path):
        make_dirs(os.path.dirname(os.path.abspath(path)))
        _created.add(_key(path))
    check_replaceable(path)
    with open(path, "a") as f:
        f.write(text)


def remove(path: str) -> None:
    """Removes a file or folder this process created in this run; anything else is a bug
    (RuntimeError), never a silent deletion."""
    if not os.path.lexists(path):
        return
    if not created_here(path):
        raise RuntimeError(f"brainjax refused to remove {path}: this run did not create it")
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def move_into_place(source: str, target: str) -> str:
    """Renames this run's `source` (file or folder) to `target`, which must not exist."""
    if os.path.lexists(target):
        raise UserError(f"{target} exists; brainjax never moves anything over an existing path")
    os.rename(source, target)
    _created.add(_key(target))
    return target


def replace_path(source: str, target: str, is_previous_output: Callable[[str], bool]) -> str:
    """Renames this run's `source` to `target`. An existing `target` is replaced only when
    `is_previous_output(target)` recognises it as an earlier brainjax output (an export
    with its sidecar); it is first renamed aside, so a kill leaves one of the two."""
    if not os.path.lexists(target):
        return move_into_place(source, target)
    if not (may_replace(target) or is_previous_output(target)):
        check_replaceable(target)
    aside = temp_path(target)
    os.unlink(aside)  # a free name beside the target, recorded as this run's
    os.rename(target, aside)
    os.rename(source, target)
    _created.add(_key(target))
    remove(aside)
    return target


def output_names(inputs: Sequence[str], ext: str = ".png") -> list[str]:
    """One unique file name per input, from its path relative to the inputs' common
    folder ('a/scan.png', 'b/scan.png' -> 'a__scan.png', 'b__scan.png'): outputs of
    several inputs with the same base name never collide. `ext` is appended unless the
    name already ends with it."""
    absolute = [os.path.abspath(p) for p in inputs]
    common = os.path.commonpath([os.path.dirname(p) for p in absolute]) if absolute else ""
    names, seen = [], set()
    for path in absolute:
        name = os.path.relpath(path, common).replace(os.sep, "__")
        name = name if name.lower().endswith(ext) else name + ext
        base, n = name, 1
        while name in seen:
            name = f"{base[:-len(ext)]}_{n}{ext}"
            n += 1
        seen.add(name)
        names.append(name)
    return names
