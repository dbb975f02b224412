"""Datasets (tfds builders, registered on import) and the tf.data input pipeline.

TensorFlow is imported here and only here (plus `pipeline`), so the training engine, the
models and the GPU benchmarks run on machines without TensorFlow.
"""

from brainjax.data import brain_phantom  # noqa: F401  (registers `brain_phantom`)
from brainjax.data import brain_tumor_mri  # noqa: F401  (registers `brain_tumor_mri`)
from brainjax.data import image_folder  # noqa: F401  (registers `image_folder`)

