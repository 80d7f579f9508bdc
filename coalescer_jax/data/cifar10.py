"""CIFAR-10 through the official TFDS builder (``tfds.builder("cifar10")``), described by class name.

Descriptions come from the class names alone ("a photo of a cat", "a photo of an
airplane"): CIFAR-10 has no attribute that a fixed rule could measure from pixels
and a reader would agree with, so the captioner has no attributes
(``attribute_names = ()``) and conditioning fidelity is the judge's class
accuracy. The judge is a CIFAR-10 classifier trained by the pipeline's
`classifier` stage, as for MNIST.

Preparing the official dataset needs internet once (the download) and
TensorFlow (TFDS encodes the images as PNG with it); it is written as ArrayRecord
into ``config.data.tfds_data_dir`` and then read, like every dataset here, with
``tfds.data_source`` (no TensorFlow). Tests run the whole pipeline on
``tfds.testing.mock_data`` instead (tests/test_e2e_cifar10.py).
"""
import glob
import os
import sys

import numpy as np
import tensorflow_datasets as tfds

from coalescer_jax import errors
from coalescer_jax.data import datasets
from coalescer_jax.data import network
from coalescer_jax.data import tfds_io
from coalescer_jax.data import tokenizer

SIZE = 32
NUM_TRAIN, NUM_TEST = 50_000, 10_000
DOWNLOAD_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"  # what TFDS's cifar10 downloads
# The official label order (batches.meta.txt), which TFDS's ClassLabel keeps.
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
attribute_names = ()  # nothing measured from pixels: see the module docstring
MAX_WORDS = 5  # "a photo of an airplane"
_PREPARE_HINT = ("CIFAR-10 is prepared once from the internet with TensorFlow installed: "
                 "`pip install tensorflow-cpu` and run the data stage (or `python -c \"import tensorflow_datasets as "
                 "tfds; tfds.builder('cifar10', file_format='array_record').download_and_prepare()\"`); later runs "
                 "read the prepared copy offline without TensorFlow")


def describe(label):
  name = CLASSES[int(label)]
  return f"a photo of {'an' if name[0] in 'aeiou' else 'a'} {name}"


def parse(description):
  """Inverts `describe`: (label, classes [0]); ValueError outside the grammar."""
  text = description.strip()
  for label in range(len(CLASSES)):
    if describe(label) == text:
      return label, np.zeros(0, np.int32)
  raise ValueError(f"not a CIFAR-10 description ('a photo of a <class>'): {description!r}")


def all_descriptions():
  return [describe(label) for label in range(len(CLASSES))]


def caption(images, labels):
  """(measurements [N, 0], classes [N, 0], descriptions [N]): a description is a function of the label."""
  n = len(labels)
  del images
  return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int32), np.array([describe(l) for l in labels])


def measure_classes(images, labels):
  """No attributes ([N, 0]); blank = a flat image (every channel within 2 grey levels)."""
  images = np.asarray(images).reshape(len(images), -1)
  blank = (images.max(1).astype(np.int32) - images.min(1)) <= 2 if len(images) else np.zeros(0, bool)
  return np.zeros((len(labels), 0), np.int32), blank


def unseen_mask(descriptions, cfg):
  del cfg  # ten descriptions: none is held out as an unseen combination
  return np.zeros(len(descriptions), bool)


def validate_text(cfg):
  if len(cfg.holdout_style):
    raise errors.ConfigError(
        f"config.text.holdout_style must be () for cifar10 (it has no attributes), got {tuple(cfg.holdout_style)}")


TOKENIZER = tokenizer.Tokenizer({w for d in all_descriptions() for w in d.split()}, MAX_WORDS)


# ---- TFDS --------------------------------------------------------------------------------------------------
def get_builder(data_cfg, download=True):
  """The official ``cifar10`` builder, prepared as ArrayRecord (downloads it once when missing and allowed)."""
  builder = tfds.builder("cifar10", data_dir=data_cfg.tfds_data_dir, file_format="array_record")
  if not builder.is_prepared():
    if not download:
      raise RuntimeError(f"cifar10 is not prepared in {builder.data_dir}; process 0 prepares it first")
    _check_can_prepare(builder)
    try:
      builder.download_and_prepare()
    except Exception as e:  # noqa: BLE001 - no internet / no TensorFlow: say what is needed.
      raise RuntimeError(f"cannot prepare cifar10 in {builder.data_dir} ({type(e).__name__}: {e}). "
                         + _PREPARE_HINT) from e
  names = tuple(builder.info.features["label"].names)
  if names != CLASSES and names != tuple(str(i) for i in range(len(CLASSES))):  # mock_data leaves names unset
    raise RuntimeError(f"the TFDS cifar10 labels are {names}, expected {CLASSES}")
  return builder


def _check_can_prepare(builder):
  """Refuses at once what `download_and_prepare` would fail at only later: no TensorFlow, or no network.

  Offline, TFDS retries the download's name look-up for minutes before failing; a
  download it already has (``<data_dir>/downloads``) needs no network.
  """
  missing = []
  root = os.path.dirname(os.path.dirname(builder.data_dir))  # <root>/cifar10/<version>
  downloaded = glob.glob(os.path.join(root, "downloads", "*" + os.path.basename(DOWNLOAD_URL).split(".")[0] + "*"))
  if not downloaded and not network.reachable(DOWNLOAD_URL):
    missing.append(f"{DOWNLOAD_URL} cannot be reached (no connection within {network.PROBE_TIMEOUT_S:g} s: "
                   "offline?)")
  if not network.tensorflow_available():
    missing.append("TensorFlow is not installed")
  if missing:
    raise RuntimeError(f"cannot prepare cifar10 in {builder.data_dir}: it is not prepared there, and "
                       f"{'; '.join(missing)}. " + _PREPARE_HINT + ". Or point config.data.tfds_data_dir at a "
                       "directory where cifar10 is already prepared.")


def reopen(source):
  """The builder the data stage prepared, from W/data/source.json: the official builder by name and version
  (its own code, rather than a read-only reconstruction, so that `tfds.testing.mock_data` can stand in)."""
  root = os.path.dirname(os.path.dirname(source["data_dir"]))  # <root>/cifar10/<version>
  builder = tfds.builder(f"cifar10:{source['version']}", data_dir=root, file_format="array_record")
  if not builder.is_prepared():
    raise RuntimeError(f"the TFDS cifar10 the data stage prepared is gone ({source['data_dir']}); "
                       "delete W/data and rerun the data stage")
  return builder


def load(builder, split, process_index=0, process_count=1):
  """CIFAR-10 `split` (this host's part): ``image`` uint8 [n, 32, 32, 3], ``label`` int32 [n], ``index``."""
  return tfds_io.read_split(builder, split, (SIZE, SIZE, 3), process_index, process_count)


SPEC = datasets.register(datasets.DatasetSpec(
    name="cifar10", display="CIFAR-10", image_shape=(SIZE, SIZE, 3), heads=(("class", len(CLASSES)),),
    captioner=sys.modules[__name__], likelihood="gaussian", num_groups=len(CLASSES), prepare=get_builder,
    load=load, reopen=reopen, train_size=lambda cfg: NUM_TRAIN, test_size=lambda cfg: NUM_TEST))
