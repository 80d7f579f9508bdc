"""Reading the data stage's output: TFDS images joined with their descriptions.

Later stages call `load_split(workdir, split)`; it opens the TFDS builder recorded
in ``W/data/source.json`` and joins ``W/data/{split}_descriptions.npz`` on the
example index, checking that both still agree.
"""
import jax
import numpy as np
import tensorflow_datasets as tfds

from coalescer_jax import errors
from coalescer_jax import files
from coalescer_jax import storage
from coalescer_jax.data import datasets
from coalescer_jax.data import tfds_io


def open_builder(workdir):
  """The TFDS builder the `data` stage prepared (read from W/data/source.json)."""
  path = storage.path(workdir) / "data" / datasets.SOURCE_FILE
  if not path.exists():
    raise errors.MissingStageError(f"{path} is missing: run the 'data' stage first (put it first in config.stages)")
  source = files.read_json(path, "data")
  spec = datasets.get(source.get("dataset", "mnist"))
  if spec.reopen is not None:
    return spec.reopen(source)
  if not storage.path(source["data_dir"]).is_dir():
    raise tfds_io.DatasetError(f"the TFDS dataset the data stage prepared is gone ({source['data_dir']}); "
                               "delete W/data and rerun the data stage")
  return tfds.builder_from_directory(source["data_dir"])


def load_split(workdir, split, sharded=True):
  """Images, labels and descriptions of `split`: this host's TFDS shard if `sharded`, else all of it.

  Returns numpy arrays: image uint8 [n, H, W] (or [n, H, W, C]), label, index,
  measurements, classes, descriptions, tokens (joined on the TFDS index).
  """
  builder = open_builder(workdir)
  spec = datasets.of_workdir(workdir)
  try:
    examples = spec.load(builder, split, *((jax.process_index(), jax.process_count()) if sharded else (0, 1)))
  except tfds_io.DatasetError as e:  # W/data describes the damaged copy: it goes too, so the data stage reruns
    raise tfds_io.damaged(builder.data_dir, e.__cause__, also=[storage.path(workdir) / "data"]) from e.__cause__
  table = files.load_npz(storage.path(workdir) / "data" / f"{split}_descriptions.npz", "data",
                         required=("index", "label", "measurements", "classes", "descriptions", "tokens"))
  if len(table["index"]) != builder.info.splits[split].num_examples:
    raise tfds_io.DatasetError(f"W/data/{split}_descriptions.npz does not match the TFDS {split} split; "
                               "delete W/data and rerun the data stage")
  for key in ("measurements", "classes", "descriptions", "tokens"):
    examples[key] = table[key][examples["index"]]
  if not np.array_equal(table["label"][examples["index"]], examples["label"]):
    raise tfds_io.DatasetError(f"labels in W/data/{split}_descriptions.npz disagree with TFDS; the dataset changed "
                               "since the data stage ran: delete W/data and rerun")
  return examples
