"""brainjax: a JAX/Flax training engine for brain-MRI tumour classification that stays
reliable on low-quality scans. See README.md and BUILD_NOTES.md."""

__version__ = "0.1.0"
