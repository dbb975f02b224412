"""`config.download=kaggle`: fetch a Kaggle brain-tumour archive into config.manual_dir
through the `kagglehub` package, before the tfds builder reads it.

Nothing is downloaded when manual_dir already holds the data (a Training/ + Testing/ tree
or a zip), so a rerun or a second process never downloads twice. Any failure (no package,
no credentials, no network, a refused licence) is one line saying what to do; the manual
route (download the zip, set manual_dir) always works.
"""

from __future__ import annotations

import logging
import os
import shutil

from brainjax import files
from brainjax.errors import UserError

log = logging.getLogger("brainjax")
SOURCES = ("kaggle",)
KAGGLE_HANDLES = {
    "brain_tumor_mri/sartaj": "sartajbhuvaji/brain-tumor-classification-mri",
    "brain_tumor_mri/nickparvar": "masoudnickparvar/brain-tumor-mri-dataset",
}
CREDENTIALS_HELP = ("set KAGGLE_USERNAME and KAGGLE_KEY, or save kaggle.json (kaggle.com > Settings > API > "
                    "Create New Token) as ~/.kaggle/kaggle.json")


def has_credentials() -> bool:
    """Whether kagglehub will find Kaggle credentials (environment or kaggle.json)."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    if os.environ.get("KAGGLE_API_TOKEN"):
        return True
    dirs = [os.environ.get("KAGGLE_CONFIG_DIR", ""), os.path.expanduser("~/.kaggle"),
            os.path.expanduser("~/.config/kaggle")]
    return any(d and os.path.isfile(os.path.join(d, "kaggle.json")) for d in dirs)


def already_present(manual_dir: str) -> bool:
    """A Training/ + Testing/ tree or a zip within two levels of manual_dir. Hidden folders
    are not looked in: an unfinished download lives in one (`fetch`)."""
    if not os.path.isdir(manual_dir):
        return False
    for dirpath, dirnames, names in os.walk(manual_dir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if {"Training", "Testing"} <= set(dirnames) or any(f.lower().endswith(".zip") for f in names):
            return True
        if dirpath.count(os.sep) - manual_dir.count(os.sep) >= 2:
            dirnames[:] = []
    return False


def check(source: str, dataset: str, manual_dir: str | None) -> str:
    """The download settings, before any work: returns the Kaggle handle."""
    if source not in SOURCES:
        raise UserError(f"config.download={source!r}: the only source is 'kaggle' (or leave it empty)")
    handle = KAGGLE_HANDLES.get(dataset)
    if handle is None:
        raise UserError(f"config.download=kaggle fetches {sorted(KAGGLE_HANDLES)}, not {dataset!r}; for your own "
                        "folders use --config.dataset=image_folder --config.manual_dir=DIR")
    if not manual_dir:
        raise UserError("config.download=kaggle needs config.manual_dir: the folder to download into")
    folder = os.path.abspath(os.path.expanduser(str(manual_dir)))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"config.manual_dir={manual_dir} is a file; config.download=kaggle downloads into a folder")
    return handle


def destination(manual_dir: str, handle: str) -> str:
    """Where a completed download lands: a new folder named after the dataset."""
    return os.path.join(manual_dir, handle.split("/")[-1])


def fetch(source: str, dataset: str, manual_dir: str | None) -> None:
    """Download `dataset`'s archive from `source` into manual_dir unless it is there.

    The files are copied into a hidden temporary folder inside manual_dir, then that folder
    is renamed to `destination` in one step, so a download killed half-way is never taken
    for the data (a rerun starts a new one; the unfinished folder is named in a warning),
    and nothing already in manual_dir is overwritten."""
    handle = check(source, dataset, manual_dir)
    manual_dir = os.path.abspath(os.path.expanduser(str(manual_dir)))
    if already_present(manual_dir):
        log.info("%s is already in %s; not downloading", handle, manual_dir)
        return
    target = destination(manual_dir, handle)
    if os.path.lexists(target):
        raise UserError(f"{target} exists but holds no Training/ + Testing/ tree or zip; brainjax does not "
                        "download over it: move it away, or point config.manual_dir at the data")
    unfinished = sorted(d for d in os.listdir(manual_dir) if d.startswith(TEMP_PREFIX)) \
        if os.path.isdir(manual_dir) else []
    if unfinished:
        log.warning("%s holds unfinished downloads (%s) from a run that was stopped; they are not used, and "
                    "can be deleted", manual_dir, ", ".join(unfinished))
    try:
        import kagglehub
    except ImportError:
        raise UserError("config.download=kaggle needs the kagglehub package: pip install 'brainjax[data]' "
                        "(or pip install kagglehub)") from None
    hint = "" if has_credentials() else f"no Kaggle credentials were found ({CREDENTIALS_HELP}); "
    log.info("downloading %s from Kaggle into %s", handle, target)
    try:
        path = kagglehub.dataset_download(handle)
    except Exception as err:  # noqa: BLE001  (network, credentials, licence: all end the same way)
        msg = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"Kaggle download of {handle} failed ({type(err).__name__}: {msg}); {hint}check the "
                        f"network, or download it yourself from https://www.kaggle.com/datasets/{handle} and set "
                        f"config.manual_dir to the zip or its folder (config.download='')") from None
    copy_complete(path, target)
    log.info("downloaded %s into %s", handle, target)


TEMP_PREFIX = ".brainjax-download-"


def copy_complete(source: str, target: str) -> None:
    """Copies the folder `source` to the new folder `target` through a hidden temporary
    folder beside it, renamed into place only once the copy is complete."""
    parent = files.make_dirs(os.path.dirname(target))
    tmp = files.temp_dir(parent, TEMP_PREFIX)
    copied = os.path.join(tmp, "data")
    shutil.copytree(source, copied)
    files.move_into_place(copied, target)
    files.remove(tmp)
