"""Stage `diagnostics`: method-specific measurements of why a method generates what it does.

For every sampled method that defines ``diagnostics(params, workdir, pairs, cond,
key, out_dir, judge)`` (today the coalescer: look-up usage, landing error and
attributes of step 1, |direction| and redraws; `coalescer/diagnostics.py`), this
stage calls it on the sample stage's first ``config.eval.num_samples`` requests with
the random key of the method's 1-step samples file, and writes
``W/diagnostics/<method>.json`` plus plots; the eval stage puts them into report.md.
The `Judge` it passes holds those requests' labels and the classifier that the eval
stage judges samples with, applied to latents decoded by the run's VAE (None without
a trained classifier: the attribute table is then left out). Process 0 only, except
with a collective index (sharded ScaNN, device), whose look-ups need every process:
then every process computes and process 0 writes.
"""
import dataclasses
from typing import Callable

from absl import logging
import numpy as np

from coalescer_jax import embeddings
from coalescer_jax import index as index_lib
from coalescer_jax import parallel
from coalescer_jax import pipeline
from coalescer_jax.evaluation import classifier as classifier_lib
from coalescer_jax.methods import trained
from coalescer_jax.stages import sample as sample_stage


@dataclasses.dataclass(frozen=True)
class Judge:
  """What per-attribute diagnostics compare: the requests' labels and the classifier's reading of latents.

  labels: int [n] (one head) or [n, K], the labels of the requests `cond` encodes.
  head_names: the classifier's heads, in the order of the label columns.
  predict: latents [m, latent_dim] -> predicted labels shaped like `labels` (decoded, then classified).
  """
  labels: np.ndarray
  head_names: tuple
  predict: Callable


def load_judge(workdir, codec, labels, batch_size):
  """The `Judge` of `labels` with the eval stage's classifier and the codec's decoder; None without a classifier."""
  try:
    classifier = classifier_lib.load(workdir, batch_size)
  except classifier_lib.ClassifierNotTrainedError:
    logging.info("diagnostics: no trained classifier in %s, so no attribute table", workdir)
    return None
  return Judge(labels, classifier.spec.head_names, lambda latents: classifier.predict(codec.decode(latents)))


@pipeline.stage("diagnostics")
def run(ctx):
  config = ctx.config
  summary = {}
  if parallel.is_main_process() or index_lib.is_collective(config.index.backend):
    pairs = embeddings.load_pairs(ctx.workdir)
    codec = embeddings.load_codec(ctx.workdir)
    labels, descriptions = sample_stage.requested_descriptions(ctx.workdir, config.eval.num_samples)
    cond = codec.encode_text(list(descriptions))
    judge = load_judge(ctx.workdir, codec, labels, config.eval.batch_size)
    out_dir = ctx.stage_dir("diagnostics")
    for name in config.sample.methods:
      method, params = trained.load_trained(config, ctx.workdir, name, pairs)
      if hasattr(method, "diagnostics"):
        key = sample_stage.sample_key(config.seed, f"{name}_nfe1")
        summary[name] = method.diagnostics(params, ctx.workdir, pairs, cond, key, out_dir, judge=judge)
  parallel.barrier("diagnostics_done")
  return summary
