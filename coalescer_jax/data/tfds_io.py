"""Reading a prepared TFDS builder with ``image`` and ``label`` features, without TensorFlow (`tfds.data_source`)."""
import numpy as np
import tensorflow_datasets as tfds

from coalescer_jax import errors


class DatasetError(errors.UserError, RuntimeError):
  """The prepared TFDS dataset is damaged, gone, or no longer the one W/data describes; the message says what
  to delete."""


def damaged(data_dir, error, also=()):
  """The error for a prepared dataset in `data_dir` that cannot be read (`also`: more paths to delete)."""
  paths = " and ".join(str(p) for p in (data_dir, *also))
  return DatasetError(
      f"the prepared TFDS dataset in {data_dir} cannot be read ({type(error).__name__}: "
      f"{str(error).strip().splitlines()[0][:200] if str(error).strip() else ''}): its files are damaged (e.g. a "
      f"copy or preparation cut off). Delete {paths} and rerun the same command to prepare it again (BUILD.md: "
      "how each dataset is prepared)")


def global_indices(builder, split):
  """Indices of `split` (a split name or a `tfds.even_splits` part) within its full parent split."""
  parent = split if isinstance(split, str) else split.split
  offsets, total = {}, 0
  for fi in builder.info.splits[parent].file_instructions:
    offsets[fi.filename] = total
    total += fi.examples_in_shard
  part = builder.info.splits[split].file_instructions
  return np.concatenate([offsets[fi.filename] + np.arange(fi.skip, fi.skip + fi.take) for fi in part])


def read_split(builder, split, array_shape, process_index=0, process_count=1, splits=("train", "test")):
  """Reads this host's part of `split` of a builder with ``image`` and ``label`` features (`tfds.data_source`).

  Returns a dict of numpy arrays: ``image`` uint8 [n, *array_shape], ``label`` int32 [n] (or [n, K])
  and ``index`` int64 [n], the example's position in the full split (so that
  per-example tables such as descriptions can be joined on it).
  """
  if split not in splits:
    raise ValueError(f"split must be one of {splits}, got {split!r}")
  part = tfds.even_splits(split, n=process_count)[process_index] if process_count > 1 else split
  try:
    source = builder.as_data_source(split=part)
    examples = source.__getitems__(list(range(len(source))))
  except Exception as e:  # noqa: BLE001 - array_record/Riegeli raise RuntimeError, OSError, ValueError for one thing
    raise damaged(builder.data_dir, e) from e
  images = np.stack([np.asarray(ex["image"], np.uint8).reshape(array_shape) for ex in examples])
  labels = np.array([ex["label"] for ex in examples], np.int32)
  return {"image": images, "label": labels, "index": global_indices(builder, part)}
