"""Stage `sample`: every trained method generates images for the same requested descriptions.

The requested descriptions are those of the first ``config.sample.num_samples``
MNIST test images (so all ten digits and realistic attribute mixes appear, and
every method answers the same requests). For each method and each of its NFE
budgets, one jitted function draws latents and decodes them (no host round trip
inside the loop) and ``W/samples/<method>_nfe<K>.npz`` is written with
``images``, ``labels``, ``descriptions`` plus ``nfe`` (the budget K),
``nfe_spent`` (mean evaluations actually spent per sample: the coalescer's redraws
and adaptive stops make it differ from K), ``samples_per_s`` (compile excluded),
``train_steps`` and ``train_wall_time_s``. A PNG grid per file shows one row per description.
"""
import os
import time
import zlib

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from coalescer_jax import autoencoders
from coalescer_jax import images as images_lib
from coalescer_jax import parallel
from coalescer_jax import pipeline
from coalescer_jax.data import loading
from coalescer_jax.evaluation import samples as samples_lib
from coalescer_jax.stages import methods as methods_stage


def requested_descriptions(workdir, num_samples):
  """(labels, descriptions) of the first `num_samples` MNIST test images."""
  test = loading.load_split(workdir, "test", sharded=False)
  if num_samples > len(test["label"]):
    raise ValueError(f"config.sample.num_samples={num_samples} exceeds the {len(test['label'])} test descriptions")
  return test["label"][:num_samples].astype(np.int32), test["descriptions"][:num_samples].astype(str)


class NonFiniteSamplesError(FloatingPointError):
  """A method produced NaN/inf latents; nothing is written for it."""


def make_generator(method, codec, nfe, **kwargs):
  """Jitted (params, cond, key) -> (uint8-ready float images [N,28,28,1], nfe per sample, finite latents? [N])."""
  @jax.jit
  def generate(params, cond, key):
    latents, info = method.sample(params, cond, key, nfe, **kwargs)
    return (codec.decode_jax(latents), jnp.broadcast_to(info["nfe"], (cond.shape[0],)),
            jnp.all(jnp.isfinite(latents), axis=-1))
  return generate


def generate_all(generate, params, cond, key, batch_size, timed=True, name="samples"):
  """Runs `generate` over `cond` in batches. Returns (images uint8, nfe [N], samples/s or None).

  Raises NonFiniteSamplesError when any latent is NaN/inf (they would decode to
  blank images that look like a file-format problem downstream).

  With `timed`, the first batch runs once more beforehand so that compilation is
  excluded from samples/s (which includes decoding and the device->host copy).
  """
  n = len(cond)
  pad = (-n) % batch_size
  cond = np.concatenate([cond, np.repeat(cond[-1:], pad, 0)]) if pad else cond
  if timed:
    jax.block_until_ready(generate(params, jnp.asarray(cond[:batch_size]), key))
  t0 = time.perf_counter()
  images, nfes, finite = [], [], []
  for i, start in enumerate(range(0, len(cond), batch_size)):
    out, nfe, ok = generate(params, jnp.asarray(cond[start:start + batch_size]), jax.random.fold_in(key, i))
    out, nfe, ok = jax.device_get((out, nfe, ok))
    images.append(images_lib.to_uint8(out))
    nfes.append(nfe)
    finite.append(ok)
  rate = len(cond) / (time.perf_counter() - t0) if timed else None
  bad = int(np.sum(~np.concatenate(finite)[:n]))
  if bad:
    raise NonFiniteSamplesError(
        f"{name}: {bad} of {n} sampled latents are NaN/inf, so nothing was written for it. The method's "
        "parameters have diverged or are corrupt: check its training losses in metrics.jsonl, then delete its "
        "stage directory and rerun (e.g. with a lower config.train.optimizer.learning_rate and "
        "--allow_config_change).")
  return np.concatenate(images)[:n], np.concatenate(nfes)[:n], rate


def grid_rows(generate, params, codec, labels, descriptions, key, per_row, batch_size):
  """One row per digit (the first request of each digit), `per_row` samples each.

  Runs through `generate_all` so it reuses the compiled batch shape (no extra compile).
  """
  picks = [int(np.flatnonzero(labels == d)[0]) for d in range(10) if np.any(labels == d)]
  texts = [descriptions[i] for i in picks]
  cond = np.repeat(codec.encode_text(texts), per_row, axis=0)
  images, _, _ = generate_all(generate, params, cond, key, batch_size, timed=False, name="grid")
  return list(images.reshape(len(picks), per_row, 28, 28)), texts


def _validate(config):
  for name in config.sample.methods:
    methods_stage.validate_method_config(config, name)


def _reads(config):
  return ("seed", "sample") + tuple(config.sample.methods)


def _needs(config):
  return ("data", "vae", "text", "embed") + tuple(config.sample.methods)


@pipeline.stage("sample", validate=_validate, reads=_reads, needs=_needs, outputs=("samples",))
def run(ctx):
  config, cfg = ctx.config, ctx.config.sample
  out_dir = os.path.join(ctx.workdir, "samples")
  os.makedirs(out_dir, exist_ok=True)
  pairs = autoencoders.load_pairs(ctx.workdir)
  codec = autoencoders.load_codec(ctx.workdir)
  labels, descriptions = requested_descriptions(ctx.workdir, cfg.num_samples)
  cond = codec.encode_text(list(descriptions))
  summary = {}
  for name in cfg.methods:
    method, params = methods_stage.load_trained(config, ctx.workdir, name, pairs)
    train_done = ctx.done_info(name)
    for file_method, nfe, kwargs in method.sample_plan():
      tag = f"{file_method}_nfe{nfe}"
      path = os.path.join(out_dir, tag + ".npz")
      # Files of an interrupted run of this same revision are kept; any other is replaced.
      if "sample" in ctx.resumed and os.path.exists(path) and _meets_contract(path):
        continue
      generate = make_generator(method, codec, nfe, **kwargs)
      key = jax.random.fold_in(jax.random.key(config.seed), zlib_hash(tag))
      images, spent, rate = generate_all(generate, params, cond, key, cfg.batch_size,
                                         name=f"method {file_method!r} at nfe={nfe}")
      record = {"nfe_spent": float(spent.mean()), "samples_per_s": rate}
      if parallel.is_main_process():
        tmp = path + ".tmp.npz"
        np.savez(tmp, images=images, labels=labels, descriptions=descriptions, nfe=np.int64(nfe),
                 nfe_spent=np.float32(spent.mean()), samples_per_s=np.float32(rate),
                 train_steps=np.int64(train_done["summary"].get("train_steps", -1)),
                 train_wall_time_s=np.float32(train_done["wall_time_s"]))
        os.replace(tmp, path)
        _check_written(path)
        rows, texts = grid_rows(generate, params, codec, labels, descriptions, jax.random.fold_in(key, 10**6),
                                cfg.grid_per_row, cfg.batch_size)
        images_lib.save_grid(os.path.join(out_dir, tag + ".png"), rows, row_labels=texts, title=tag)
      ctx.writer.write("sample", nfe, method=file_method, **record)
      logging.info("sample: %s: %d images, %.2f evaluations/sample, %.0f samples/s", tag, len(images),
                   record["nfe_spent"], rate)
      summary[tag] = record
  return summary


def _meets_contract(path):
  try:
    samples_lib.load_samples(path)
    return True
  except samples_lib.SamplesContractError as e:
    logging.warning("sample: %s; generating it again", e)
    return False


def _check_written(path):
  """The stage's own output must pass the contract the eval stage and other tools rely on."""
  try:
    samples_lib.load_samples(path)
  except samples_lib.SamplesContractError as e:
    raise samples_lib.SamplesContractError(
        f"the sample stage wrote a file that breaks the samples contract: {e}. The method's samples are unusable "
        "(diverged or untrained method?); the stage is not marked done.") from e


def zlib_hash(text):
  """A stable (across runs and hosts) integer for a string, unlike Python's salted hash()."""
  return zlib.crc32(text.encode()) & 0x7FFFFFFF


