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
    """A Training/ + Testing/ tree or a zip within two levels of manual_dir."""
    if not os.path.isdir(manual_dir):
        return False
    for dirpath, dirnames, files in os.walk(manual_dir):
        if {"Training", "Testing"} <= set(dirnames) or any(f.lower().endswith(".zip") for f in files):
            return True
        if dirpath.count(os.sep) - manual_dir.count(os.sep) >= 2:
            dirnames[:] = []
    return False


def fetch(source: str, dataset: str, manual_dir: str | None) -> None:
    """Download `dataset`'s archive from `source` into manual_dir unless it is there."""
    if source not in SOURCES:
        raise UserError(f"config.download={source!r}: the only source is 'kaggle' (or leave it empty)")
    handle = KAGGLE_HANDLES.get(dataset)
    if handle is None:
        raise UserError(f"config.download=kaggle fetches {sorted(KAGGLE_HANDLES)}, not {dataset!r}; for your own "
                        "folders use --config.dataset=image_folder --config.manual_dir=DIR")
    if not manual_dir:
        raise UserError("config.download=kaggle needs config.manual_dir: the folder to download into")
    manual_dir = os.path.abspath(os.path.expanduser(str(manual_dir)))
    if already_present(manual_dir):
        log.info("%s is already in %s; not downloading", handle, manual_dir)
        return
    try:
        import kagglehub
    except ImportError:
        raise UserError("config.download=kaggle needs the kagglehub package: pip install 'brainjax[data]' "
                        "(or pip install kagglehub)") from None
    hint = "" if has_credentials() else f"no Kaggle credentials were found ({CREDENTIALS_HELP}); "
    log.info("downloading %s from Kaggle into %s", handle, manual_dir)
    try:
        path = kagglehub.dataset_download(handle)
    except Exception as err:  # noqa: BLE001  (network, credentials, licence: all end the same way)
        msg = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"Kaggle download of {handle} failed ({type(err).__name__}: {msg}); {hint}check the "
                        f"network, or download it yourself from https://www.kaggle.com/datasets/{handle} and set "
                        f"config.manual_dir to the zip or its folder (config.download='')") from None
    os.makedirs(manual_dir, exist_ok=True)
    shutil.copytree(path, manual_dir, dirs_exist_ok=True)
    log.info("downloaded %s into %s", handle, manual_dir)
