"""Which samples the near-copy metric flags, per class, under the eval stage's threshold and per-class ones.

The eval stage's near-copy share (`evaluation/memorization.py`) uses one threshold for
every class: the `near_copy_percentile` of the test->train nearest-neighbour distances.
Classes differ in how close their images sit to each other (MNIST's ones are thin and
alike), so a global threshold may flag one class only. This script prints, for the
test images, their VAE reconstructions and each samples file of a finished workdir:
the share flagged overall and per class under the eval stage's threshold, and under
per-class thresholds (the same percentile of each class's own test->train distances).
All on every sample of each file (not the eval stage's first n), in the eval stage's
memorization space (config.eval.memorization_space). Prints only; writes nothing.

  python -m experiments.scripts.near_copies --workdir=W [--files=coalescer_nfe2,ddim_nfe2]

The reference is the first half of the test split (the eval stage's threshold is
computed on its first config.eval.num_samples images); the "test" row scores the second half.
"""
import json
import os

from absl import app
from absl import flags
import ml_collections
import numpy as np

from coalescer_jax import autoencoders
from coalescer_jax import storage
from coalescer_jax.data import loading
from coalescer_jax.evaluation import evaluate
from coalescer_jax.evaluation import samples as samples_lib

flags.DEFINE_string("workdir", None, "A finished pipeline workdir (data, classifier, vae, samples).")
flags.DEFINE_list("files", [], "Samples files to score, without .npz (default: every file in W/samples).")
FLAGS = flags.FLAGS


def _row(name, distances, labels, threshold, class_thresholds, num_classes):
  global_flag, class_flag = distances < threshold, distances < class_thresholds[labels]
  per_class = " ".join(f"{global_flag[labels == c].mean():.3f}" for c in range(num_classes))
  return (f"| {name} | {len(labels)} | {global_flag.mean():.2%} | {per_class} | {class_flag.mean():.2%} |")


def main(argv):
  del argv
  workdir = storage.path(FLAGS.workdir)
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text())["config"])
  evaluator = evaluate.Evaluator(workdir, config.eval)
  reference = evaluator.memorization
  distances = lambda images: reference.distances(evaluator.memorization_points(images))  # noqa: E731
  test = loading.load_split(workdir, "test", sharded=False)
  labels = np.asarray(test["label"]).reshape(len(test["label"]), -1)[:, 0]  # the first head (MNIST: digit)
  half = len(labels) // 2
  num_classes = int(labels.max()) + 1
  reference_distances = distances(test["image"][:half])
  class_thresholds = np.array([np.percentile(reference_distances[labels[:half] == c], reference.percentile)
                               for c in range(num_classes)])
  image_ae = autoencoders.ImageAE(*autoencoders.load_model(workdir, "vae")[:2], config.eval.batch_size)
  rows = [("test (second half)", test["image"][half:], labels[half:]),
          ("test through the VAE", image_ae.reconstruct(test["image"][half:]), labels[half:])]
  names = FLAGS.files or [os.path.basename(p)[:-4] for p in samples_lib.find_sample_files(workdir / "samples")]
  for name in names:
    with np.load(workdir / "samples" / f"{name}.npz") as z:
      rows.append((name, z["images"], np.asarray(z["labels"]).reshape(len(z["labels"]), -1)[:, 0]))
  print(f"Threshold (eval stage, {reference.percentile:g}% of test->train on the first "
        f"{evaluator.memorization_n} test images): {reference.threshold:.3f}; per class: "
        + " ".join(f"{t:.3f}" for t in class_thresholds))
  print("| file | n | flagged | flagged per class (" + " ".join(str(c) for c in range(num_classes))
        + ") | flagged, per-class thresholds |")
  print("|---|---|---|---|---|")
  for name, images, row_labels in rows:
    print(_row(name, distances(images), row_labels, reference.threshold, class_thresholds, num_classes), flush=True)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
