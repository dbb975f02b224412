"""Datasets and decoding.

  decode         the one decoder (image files, DICOM, NIfTI -> uint8 slices); numpy and PIL only
  images         duplicate detection and the PNG the builds store
  builders       registers the tfds builders (imports TensorFlow)
  pipeline       the tf.data input pipeline (imports TensorFlow)

Importing this package imports nothing heavy: `brainjax.data.decode` runs where neither
JAX nor TensorFlow is installed (a deployment's onnxruntime runner).
"""
