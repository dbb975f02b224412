"""Errors a user can fix (bad config, missing file, unreadable input).

The launcher prints these as one clear message and exits non-zero instead of a traceback.
"""


class UserError(ValueError):
    """A problem with the user's config, files or data; the message says what to do."""


# Optional packages -> the pip extra that installs them (pyproject.toml).
EXTRAS = {"tensorflow": "data", "tensorflow_datasets": "data", "kagglehub": "data", "pydicom": "data", "nibabel": "data",
          "jax2onnx": "export", "onnx": "export", "onnxruntime": "export"}


def missing_extra(err: ImportError) -> str | None:
    """'pip install ...' advice for an optional package that is not installed, else None."""
    name = (getattr(err, "name", None) or "").split(".")[0]
    extra = EXTRAS.get(name)
    if extra is None:
        return None
    return f"the optional package {name} is not installed; pip install 'brainjax[{extra}]'"
