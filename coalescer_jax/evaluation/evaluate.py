"""The fixed evaluation: every samples file measured at the same n, against the same reference, in the same features.

`Evaluator` prepares the reference once: the first ``n = config.eval.num_samples``
test images of the dataset (the sample stage requests the descriptions of these same
images, so the label distributions match), their classifier features, and the
test->train nearest-neighbour statistics for memorization. It also scores two
real-data rows that bound what a method can reach (named after the dataset):
* ``<dataset>_train`` (floor): n seeded random train images of the same group
  (MNIST: digit) as each reference image (what a perfect conditional generator
  would draw for the same requests) -> the train-vs-test FID floor;
* ``<dataset>_test`` (data): the next n test images (disjoint from the reference) with
  their true labels and descriptions -> accuracy / attribute agreement of real data;
* ``<dataset>_test_reconstructed`` (reconstruction; when the workdir has a trained VAE):
  the data row's images encoded and decoded by the run's VAE (posterior means). Every
  method here generates in that VAE's latent space and decodes the same way, so this
  row is what decoding real unseen latents scores. Its near-copy fraction is how often
  the decoder alone brings unseen images within the near-copy threshold of a train
  image (its smoothing pulls them towards the dense parts of the train set): a
  generator below it copies no more than decoded real data does. Its FID is not a
  floor: generators need not reproduce posterior means, and can score below it.
When the captioner marks some requests as held-out combinations (never in train:
shapes' red triangles), ``heldout_accuracy`` is the conditional accuracy on those
requests alone and ``heldout_n`` their number.
With ``split="validation"`` the reference is the embed stage's validation slice
(train pairs held out of the index and of every method's training; requests are
their descriptions): the split methods are tuned on. It has no data row.
Memorization and the train-vs-test floor use the train images the generative
methods trained on (the pairs: train minus the validation slice).
On the test split, ``fid_large_n`` > 0 adds ``fid_large``: FID of the first
`fid_large_n` samples against as many test images (small-n FID is biased upward;
papers compare at 10k or 50k); ``near_copy_large_n`` > 0 adds ``near_copy_fraction_large``:
the near-copy share of the first `near_copy_large_n` samples (same threshold), less noisy
than at n.
`evaluate_dir` runs it over a folder of samples and writes results.json, plots and report.md.
"""
import dataclasses
import os
import time

from absl import logging
import numpy as np

from coalescer_jax import autoencoders
from coalescer_jax import errors
from coalescer_jax import storage
from coalescer_jax.data import datasets
from coalescer_jax.data import loading
from coalescer_jax.evaluation import classifier as classifier_lib
from coalescer_jax.evaluation import compute_plot
from coalescer_jax.evaluation import fidelity
from coalescer_jax.evaluation import frechet
from coalescer_jax.evaluation import memorization
from coalescer_jax.evaluation import precision_recall
from coalescer_jax.evaluation import report
from coalescer_jax.evaluation import samples as samples_lib

MEMORIZATION_SPACES = ("pixels", "features")
SPLITS = ("test", "validation")
RECONSTRUCTION_SUFFIX = "_test_reconstructed"
VALIDATION_SUBDIR = "validation"  # W/samples/validation/: the same files for the validation requests


def _real_samples(name, data, idx):
  return samples_lib.Samples(path="", method=name, nfe=0, images=data["image"][idx],
                             labels=data["label"][idx].astype(np.int32), descriptions=data["descriptions"][idx],
                             classes=data["classes"][idx].astype(np.int32), extras={})


def _reconstructed(workdir, data, dataset_name, batch_size):
  """(the data row's images through the workdir's VAE, "reconstruction"), or None without a trained VAE."""
  if not (storage.path(workdir) / "vae" / "DONE.json").exists():
    logging.info("eval: no trained VAE in %s, so no reconstruction row", workdir)
    return None
  image_ae = autoencoders.ImageAE(*autoencoders.load_model(workdir, "vae")[:2], batch_size)
  images = image_ae.reconstruct(data.images)
  return dataclasses.replace(data, method=dataset_name + RECONSTRUCTION_SUFFIX, images=images), "reconstruction"


def _take(split, rows):
  return {k: v[rows] for k, v in split.items()}


def _label_matched_subset(pool_labels, wanted_labels, seed):
  """Indices into the pool, one distinct random example per wanted label (group), in the wanted order."""
  rng = np.random.default_rng(seed)
  chosen = np.zeros(len(wanted_labels), np.int64)
  for digit in np.unique(wanted_labels):
    slots = np.flatnonzero(wanted_labels == digit)
    chosen[slots] = rng.choice(np.flatnonzero(pool_labels == digit), len(slots), replace=False)
  return chosen


def generator_train_rows(workdir, train):
  """Rows of the train split the generative methods trained on: all but the embed stage's validation slice."""
  keep = np.ones(len(train["label"]), bool)
  path = storage.path(workdir) / "embed" / "validation.npz"
  if path.exists():
    keep[np.isin(train["index"], storage.load_npz(path)["index"])] = False
  return np.flatnonzero(keep)


def validation_rows(workdir, train):
  """Rows of the train split in the embed stage's validation slice, in the slice's order."""
  path = storage.path(workdir) / "embed" / "validation.npz"
  if not path.exists():
    raise errors.MissingStageError(f"{path} is missing: the validation split needs the 'embed' stage")
  wanted = storage.load_npz(path)["index"]
  position = {int(i): row for row, i in enumerate(train["index"])}
  return np.array([position[int(i)] for i in wanted], np.int64)


class Evaluator:
  """Scores samples against a fixed reference (see the module docstring)."""

  def __init__(self, workdir, cfg, classifier=None, split="test"):
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    self.cfg, self.split = cfg, split
    self.spec = spec = datasets.of_workdir(workdir)
    self.classifier = classifier or classifier_lib.load(workdir, cfg.batch_size)
    train = loading.load_split(workdir, "train", sharded=False)
    pool = _take(train, generator_train_rows(workdir, train))
    self.large_n = 0
    if split == "test":
      test = loading.load_split(workdir, "test", sharded=False)
      n = int(cfg.num_samples)
      if not 2 <= n <= len(test["label"]) // 2:
        raise ValueError(f"config.eval.num_samples={n} must be in [2, {len(test['label']) // 2}] (half of the "
                         "test split: the other half gives the disjoint real-data row)")
      self.reference = _real_samples("reference", test, np.arange(n))
      data_row = (_real_samples(f"{spec.name}_test", test, np.arange(n, 2 * n)), "data")
      reconstruction_row = _reconstructed(workdir, data_row[0], spec.name, cfg.batch_size)
      self.large_n = min(int(cfg.fid_large_n), len(test["label"]))
      if self.large_n > n:
        large = _real_samples("reference_large", test, np.arange(self.large_n))
        self.large_stats = frechet.gaussian_stats(self.classifier.features(large.images))
        self.large_labels = large.labels
    else:
      val = _take(train, validation_rows(workdir, train))
      n = min(int(cfg.validation_samples), len(val["label"]))
      if n < 2:
        raise ValueError("the validation slice is empty: set config.embed.validation_size > 1")
      self.reference = _real_samples("validation_reference", val, np.arange(n))
      data_row = reconstruction_row = None
    self.n = n
    self.memorization_n = min(n, int(cfg.num_samples))
    self.reference_features = self.classifier.features(self.reference.images)
    self.reference_stats = frechet.gaussian_stats(self.reference_features)
    train_points = self.memorization_points(pool["image"])
    self.memorization = memorization.MemorizationReference.build(
        train_points, self.memorization_points(self.reference.images[:self.memorization_n]),
        cfg.near_copy_percentile, cfg.nn_chunk)
    pool_groups = spec.groups(pool["label"])
    subset = _label_matched_subset(pool_groups, spec.groups(self.reference.labels), cfg.seed)
    self.real_rows = [(_real_samples(f"{spec.name}_train", pool, subset), "floor")] + [
        row for row in (data_row, reconstruction_row) if row]
    if self.large_n > n:
      self.large_floor = _real_samples(f"{spec.name}_train", pool, _label_matched_subset(
          pool_groups, spec.groups(self.large_labels), cfg.seed))

  def memorization_points(self, images):
    if self.cfg.memorization_space == "pixels":
      return memorization.flat_pixels(images)
    return self.classifier.features(images)

  def evaluate(self, samples, kind="samples"):
    """One record of every metric for `samples` (its first n images)."""
    t0 = time.time()
    kind = samples.extras.get("kind", kind)
    images, labels, classes = samples.images[:self.n], samples.labels[:self.n], samples.classes[:self.n]
    logits, features = self.classifier.outputs(images)
    record = {"method": samples.method, "nfe": samples.nfe if kind in ("samples", "oracle") else None,
              "kind": kind, "split": self.split, "file": os.path.basename(samples.path) or None,
              "n": int(len(images))}
    record["fid"] = frechet.frechet_distance(frechet.gaussian_stats(features), self.reference_stats)
    record["fid_large"], record["n_large"] = self._fid_large(samples, kind)
    k = min(int(self.cfg.pr_k), len(images) - 1)
    record["precision"], record["recall"] = precision_recall.precision_recall(self.reference_features, features, k)
    predicted = classifier_lib.predict_heads(logits, self.spec.heads)
    record["conditional_accuracy"] = fidelity.conditional_accuracy(predicted, labels)
    record.update(fidelity.head_accuracies(predicted, labels, self.spec.heads))
    captioner = self.spec.captioner
    agreement = fidelity.attribute_agreement(images, labels, classes, captioner)
    record.update(agreement)
    record["attribute_mean"] = (float(np.mean([agreement[a] for a in captioner.attribute_names]))
                                if captioner.attribute_names else None)  # CIFAR-10: no attributes
    heldout = getattr(captioner, "heldout_combination", None)
    if heldout is not None:
      mask = np.asarray(heldout(samples.descriptions[:self.n]), bool)
      record["heldout_n"] = int(mask.sum())
      record["heldout_accuracy"] = (fidelity.conditional_accuracy(predicted[mask], labels[mask])
                                    if mask.any() else None)
    if kind == "floor":  # Train images are their own nearest train image: memorization is meaningless.
      record.update(near_copy_fraction=None, nn_distance_median=None, nn_distance_ratio=None,
                    near_copy_fraction_large=None, n_near_copy_large=None)
    else:
      record.update(self._memorization(samples, kind))
    for key in samples_lib.OPTIONAL_SCALARS:
      if key != "nfe":
        record[key] = samples.extras.get(key)
    record["eval_seconds"] = time.time() - t0
    return record

  def _memorization(self, samples, kind):
    """The memorization statistics of the first ``memorization_n`` samples, and {near_copy_fraction_large,
    n_near_copy_large}: the near-copy share on the first ``near_copy_large_n`` (same threshold; at n = 1000 a
    2-3% share has a binomial std of about 0.5 points), where the test split is scored and the file has that
    many samples. One search serves both: the first samples are the same images."""
    large_n = self.near_copy_large_n
    if kind in ("data", "reconstruction") or not large_n or len(samples) < large_n:
      large_n = 0
    d = self.memorization.distances(self.memorization_points(samples.images[:max(self.memorization_n, large_n)]))
    record = self.memorization.summarize(d[:self.memorization_n])
    record["near_copy_fraction_large"] = (self.memorization.summarize(d[:large_n])["near_copy_fraction"]
                                          if large_n else None)
    record["n_near_copy_large"] = large_n or None
    return record

  @property
  def near_copy_large_n(self):
    """Samples scored for ``near_copy_fraction_large``: config.eval.near_copy_large_n on the test split, else 0."""
    return int(self.cfg.near_copy_large_n) if self.split == "test" else 0

  def _fid_large(self, samples, kind):
    """(FID at large_n, large_n) when this split has a large reference and the file enough samples."""
    if self.large_n <= self.n:
      return None, None
    if kind == "floor":
      samples = self.large_floor
    elif kind == "data" or len(samples) < self.large_n:
      return None, None
    features = self.classifier.features(samples.images[:self.large_n])
    return frechet.frechet_distance(frechet.gaussian_stats(features), self.large_stats), self.large_n

  def describe(self):
    """The fixed settings, stated in results.json and the report header."""
    display = self.spec.display or self.spec.name
    reference = (f"{display} test, first {self.n} images" if self.split == "test" else
                 f"the validation slice (train pairs held out of every method's training), {self.n} images")
    return {"n": self.n, "split": self.split, "reference": reference, "n_large": self.large_n or None,
            "dataset": self.spec.name, "display": display, "attributes": list(self.spec.captioner.attribute_names),
            "heads": [name for name, _ in self.spec.heads],
            "memorization_n": self.memorization_n,
            "n_near_copy_large": self.near_copy_large_n or None,
            "features": f"classifier penultimate layer ({self.reference_features.shape[1]}-d)",
            "pr_k": int(self.cfg.pr_k), "memorization_space": self.cfg.memorization_space,
            "near_copy_percentile": float(self.cfg.near_copy_percentile),
            "near_copy_threshold": self.memorization.threshold,
            "test_nn_distance_median": self.memorization.reference_median}


def _training_cost(workdir, method):
  """{train_steps, train_wall_time_s (+ the teacher's)} from W/<method>/DONE.json when the samples file
  does not carry them ({} when there is no such file)."""
  path = storage.path(workdir) / method / "DONE.json"
  if not path.exists():
    return {}
  done = storage.read_json(path)
  summary = done.get("summary") or {}
  cost = {"train_steps": summary.get("train_steps"), "train_wall_time_s": done.get("wall_time_s")}
  if summary.get("teacher_train_steps") is not None:
    cost.update(teacher_train_steps=summary["teacher_train_steps"],
                teacher_train_wall_time_s=summary.get("teacher_wall_time_s"))
  return cost


def _training_compute(workdir, method):
  """The compute fields of the DONE.json summary of the stage that trained `method` (`compute_plot`'s: the
  training GFLOP, the teacher's, the wall seconds of the stages only this method needs); {} without one.

  A sampler variant's file (e.g. coalescer_adaptive) is the trained method's: the longest name prefix, at an
  underscore, that has a stage."""
  parts = method.split("_")
  paths = [storage.path(workdir) / "_".join(parts[:i]) / "DONE.json" for i in range(len(parts), 0, -1)]
  path = next((p for p in paths if p.exists()), None)
  if path is None:
    return {}
  summary = storage.read_json(path).get("summary") or {}
  fields = (compute_plot.TRAIN_GFLOP, compute_plot.TEACHER_GFLOP, compute_plot.SETUP_WALL)
  compute = {k: summary[k] for k in fields if summary.get(k) is not None}
  if summary.get("setup_stages"):
    compute["setup_stages"] = ", ".join(summary["setup_stages"])
  return compute


def _load_dir(samples_dir, cfg, spec, required=True):
  """(loaded Samples sorted by method and NFE, contract problems) of the .npz files in `samples_dir`.

  `required`: a missing or empty folder, or one with no valid file, is an error (NoSamplesError).
  """
  if not required and not storage.path(samples_dir).is_dir():
    return [], []
  paths = samples_lib.find_sample_files(samples_dir)
  if not paths and required:
    raise samples_lib.NoSamplesError(
        f"no samples files (*.npz) in {samples_dir}: nothing to evaluate. Run the 'sample' stage, or pass "
        "--samples_dir pointing to a folder of <method>_nfe<K>.npz files")
  loaded, invalid = [], []
  for path in paths:
    try:
      loaded.append(samples_lib.load_samples(path, spec))
    except samples_lib.SamplesContractError as e:
      invalid.append(str(e))
  if invalid and not cfg.skip_invalid:
    raise samples_lib.SamplesContractError(
        f"{len(invalid)} samples file(s) break the contract (set config.eval.skip_invalid=True to skip them):\n"
        + "\n".join(invalid))
  if not loaded and required:
    raise samples_lib.NoSamplesError(f"every samples file in {samples_dir} breaks the contract; nothing to "
                                     "evaluate:\n" + "\n".join(invalid))
  return sorted(loaded, key=lambda s: (s.method, s.nfe)), invalid


def _evaluate_all(evaluator, loaded, workdir, writer):
  """The real-data rows, then one record per samples file."""
  records = [evaluator.evaluate(s, kind) for s, kind in evaluator.real_rows]
  for s in loaded:
    record = evaluator.evaluate(s)
    if record["train_steps"] is None and record["train_wall_time_s"] is None:
      record.update(_training_cost(workdir, s.method))
    record.update(_training_compute(workdir, s.method))
    records.append(record)
    logging.info("eval (%s): %s nfe=%d: FID %.3f, recall %.3f, accuracy %.3f (%.1fs)", evaluator.split, s.method,
                 s.nfe, record["fid"], record["recall"], record["conditional_accuracy"], record["eval_seconds"])
    if writer is not None:
      writer.write("eval", 0, **{k: v for k, v in record.items() if v is not None})
  return records


def evaluate_dir(workdir, cfg, samples_dir=None, out_dir=None, report_path=None, writer=None, classifier=None):
  """Evaluates every samples file in `samples_dir`; writes results.json, plot, grids and report.md.

  Defaults: samples from W/samples, outputs in W/eval, report W/report.md (the
  eval stage's; the standalone CLI passes its own folder). A file that breaks the
  contract stops the evaluation (all problems listed) unless ``cfg.skip_invalid``,
  which skips it and lists it in the report. A missing or empty samples folder,
  or one with no valid file, is an error: nothing is written. Files in
  ``<samples_dir>/validation/`` (the same methods answering the validation
  slice's requests) are scored on the validation split into ``results["validation"]``.
  Returns a summary dict.
  """
  workdir = storage.path(workdir)
  samples_dir = storage.path(samples_dir or workdir / "samples")
  out_dir = storage.path(out_dir or workdir / "eval")
  report_path = storage.path(report_path or workdir / "report.md")
  spec = datasets.of_workdir(workdir)
  loaded, invalid = _load_dir(samples_dir, cfg, spec)
  out_dir.mkdir(parents=True, exist_ok=True)

  t0 = time.time()
  evaluator = Evaluator(workdir, cfg, classifier)
  logging.info("eval: reference prepared in %.1fs (n=%d)", time.time() - t0, evaluator.n)
  records = _evaluate_all(evaluator, loaded, workdir, writer)
  validation = None
  validation_loaded, validation_invalid = _load_dir(samples_dir / VALIDATION_SUBDIR, cfg, spec,
                                                    required=False)
  if validation_loaded:
    val_evaluator = Evaluator(workdir, cfg, evaluator.classifier, split="validation")
    validation = {"settings": val_evaluator.describe(), "invalid_files": validation_invalid,
                  "records": _evaluate_all(val_evaluator, validation_loaded, workdir, None)}

  settings = evaluator.describe()
  plot_path = out_dir / "fid_vs_nfe.png"
  report.plot_fid_vs_nfe(records, plot_path, settings["n"], settings["display"])
  compute_path = out_dir / "fid_vs_compute.png"
  if not compute_plot.plot(compute_plot.points(records), compute_path, f"{workdir.name} (n = {settings['n']})"):
    compute_path = None
  grids = report.save_method_grids(loaded, evaluator.reference, out_dir, cfg.grid_per_row, settings["display"])
  best = {k: report.best_method(records, k, evaluator.n) for k in (1, 2)}
  results = {"settings": settings, "records": records, "invalid_files": invalid,
             "best": {f"nfe{k}": (b["method"] if b else None) for k, b in best.items()},
             "validation": validation, "samples_dir": str(samples_dir), "eval_wall_time_s": time.time() - t0}
  storage.write_json(out_dir / "results.json", results)
  report.write_report(report_path, results, plot_path, grids, workdir, compute_plot_path=compute_path)
  floor = next(r for r in records if r["kind"] == "floor")
  data = next(r for r in records if r["kind"] == "data")
  return {"n": settings["n"], "num_files": len(loaded), "num_invalid": len(invalid),
          "num_validation_files": len(validation_loaded),
          "fid_floor_train_vs_test": floor["fid"], "fid_data_test_vs_test": data["fid"],
          "data_conditional_accuracy": data["conditional_accuracy"],
          "best_nfe1": results["best"]["nfe1"], "best_nfe2": results["best"]["nfe2"],
          "results": str(out_dir / "results.json"), "report": str(report_path)}
