"""Registers brainjax's tfds builders (importing them is what registers them)."""

from brainjax.data import brain_phantom  # noqa: F401  (registers `brain_phantom`)
from brainjax.data import brain_tumor_mri  # noqa: F401  (registers `brain_tumor_mri`)
from brainjax.data import image_folder  # noqa: F401  (registers `image_folder`)
from brainjax.data import multi_source  # noqa: F401  (registers `multi_source`)
