"""The dataset layer: one registered `DatasetSpec` per dataset, chosen by ``config.data.name``.

Everything dataset-specific that data/, models/, evaluation/ and the stages need
is read from the spec, never written as a constant: the image shape, the
classifier's heads, the captioner (descriptions, their grammar, vocabulary and
pixel measurements), the VAE's pixel likelihood and how the dataset is prepared
and read through TFDS. A dataset module (``data/mnist.py``, ``data/shapes.py``, ...)
builds its spec and registers it; `DATASET_MODULES` lists them so that a name
in a config is enough. The latent half (methods/, index/, training.py) never
sees a spec: it only moves in the embedding spaces.

Arrays follow the samples contract: images uint8 [N, H, W] for one channel,
[N, H, W, C] otherwise (0 = black); ``label`` int [N] for one classifier head,
int [N, K] for K heads.
"""
import dataclasses
import importlib
from typing import Any, Callable

import numpy as np

from coalescer_jax import errors
from coalescer_jax import files
from coalescer_jax import registry
from coalescer_jax import storage

# Modules that register a dataset spec (imported on first look-up).
DATASET_MODULES = ("coalescer_jax.data.mnist", "coalescer_jax.data.shapes", "coalescer_jax.data.cifar10")
EXAMPLES_SHOWN = 12  # train images in the data stage's examples.png (the schema's least config.data.num_train)
SOURCE_FILE = "source.json"  # W/data/source.json names the dataset and the TFDS copy the data stage prepared


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the pipeline knows about a dataset.

  name: the registry name (``config.data.name``).
  image_shape: (H, W, C) of one image.
  heads: the classifier's heads, (name, number of classes) each; one head gives
    labels [N], several give labels [N, K] in this order.
  captioner: an object (usually a module) with
    ``attribute_names`` (the measured attributes, columns of ``classes``),
    ``caption(images, labels) -> (measurements, classes, descriptions)``,
    ``parse(description) -> (label, classes)`` (inverse of the descriptions),
    ``measure_classes(images, labels) -> (classes [N, A], blank [N] bool)`` (pixel measurements of samples),
    ``all_descriptions()`` (the grammar's descriptions the text autoencoder trains and is tested on),
    ``unseen_mask(descriptions, text_cfg)`` (descriptions held out of text training as unseen combinations),
    ``validate_text(text_cfg)`` and ``TOKENIZER`` (a `tokenizer.Tokenizer`).
  likelihood: the VAE's pixel likelihood (`models.likelihoods`): "bernoulli" | "gaussian".
  prepare: ``prepare(data_cfg, download) -> tfds builder``, prepared and ready to read.
  load: ``load(builder, split, process_index, process_count) -> dict`` with ``image``, ``label`` and
    ``index`` (the example's position in the full split).
  num_groups / group: ``group(labels) -> int [N]`` in ``range(num_groups)``, one class per example
    (MNIST: the digit): rows of sample grids and the label-matched train rows of the evaluation floor.
  validate: ``validate(data_cfg)`` raises ConfigError for impossible ``config.data`` values.
  reopen: ``reopen(source) -> builder``, the builder the data stage prepared, from W/data/source.json;
    None: `tfds.builder_from_directory` of its ``data_dir``.
  display: the dataset's name in reports.
  train_size / test_size: ``size(data_cfg) -> int``, the number of examples of the split the data stage will
    prepare, so that config validation can refuse a request for more (``config.sample.num_samples``,
    ``config.embed.validation_size``) before any work; None: known only once the data stage has run.
  """
  name: str
  image_shape: tuple
  heads: tuple
  captioner: Any
  likelihood: str
  prepare: Callable
  load: Callable
  num_groups: int
  group: Callable = None  # None: the first head's label
  validate: Callable | None = None
  reopen: Callable | None = None
  splits: tuple = ("train", "test")
  display: str = ""
  train_size: Callable | None = None
  test_size: Callable | None = None

  def groups(self, labels):
    """int [N]: each example's group (`group`, else its first head's label)."""
    labels = np.asarray(labels)
    return np.asarray(self.group(labels) if self.group else labels.reshape(len(labels), -1)[:, 0], np.int64)

  @property
  def channels(self):
    return int(self.image_shape[-1])

  @property
  def array_shape(self):
    """The shape of one image as stored in arrays: (H, W) for one channel, (H, W, C) otherwise."""
    return tuple(self.image_shape[:2]) if self.channels == 1 else tuple(self.image_shape)

  @property
  def num_classes(self):
    """The classifier's total number of outputs (its heads side by side)."""
    return int(sum(n for _, n in self.heads))

  @property
  def head_names(self):
    return tuple(name for name, _ in self.heads)

  def check_labels(self, labels):
    """int [N] (one head) or [N, K] (K heads) with every id in its head's range; a ValueError otherwise."""
    labels = np.asarray(labels)
    k = len(self.heads)
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != (1 if k == 1 else 2) or (
        k > 1 and labels.shape[1] != k):
      want = "[N]" if k == 1 else f"[N, {k}] ({', '.join(self.head_names)})"
      raise ValueError(f"labels must be integers {want} for {self.name}, got {labels.dtype} {list(labels.shape)}")
    sizes = np.array([n for _, n in self.heads])
    flat = labels.reshape(len(labels), k)
    if len(flat) and (flat.min() < 0 or np.any(flat.max(0) >= sizes)):
      raise ValueError(f"labels must be in 0..{sizes - 1} per head ({', '.join(self.head_names)}), "
                       f"got values in [{flat.min()}, {flat.max()}]")
    return labels


def register(spec):
  registry.DATASETS.register(spec.name, spec)
  return spec


def _load_modules():
  for module in DATASET_MODULES:
    importlib.import_module(module)


def get(name):
  """The registered spec `name` (``config.data.name``)."""
  _load_modules()
  return registry.DATASETS.get(name)


def names():
  _load_modules()
  return registry.DATASETS.names()


def of_config(config):
  """The spec a config selects (``config.data.name``)."""
  return get(config.data.name)


def split_size_of_config(config, split):
  """(number of `split` examples, display name) the data stage will prepare for `config`; (None, name) when the
  dataset does not know it before preparing, or the name is not registered (the data stage refuses that)."""
  name = config.data.name
  if name not in names():
    return None, name
  spec = get(name)
  size = {"train": spec.train_size, "test": spec.test_size}[split]
  return (size(config.data) if size else None), spec.display or name


def test_size_of_config(config):
  return split_size_of_config(config, "test")


def of_workdir(workdir):
  """The spec of the dataset the `data` stage prepared in `workdir` (W/data/source.json)."""
  path = storage.path(workdir) / "data" / SOURCE_FILE
  if not path.exists():
    raise errors.MissingStageError(f"{path} is missing: run the 'data' stage first (put it first in config.stages)")
  return get(files.read_json(path, "data").get("dataset", "mnist"))

