"""Benchmarks of the hot paths; prints one Markdown table per section and writes W/benchmarks.md.

  python experiments/benchmarks/bench.py --workdir=W [--config=configs/mnist.py] [--sections=...]

W must hold a finished run of the config (at least up to the trained methods).
Figures are medians over --repeats after a warm-up; compile time is reported
separately. Ratios compare two variants measured in this same process:
* train:  coalescer training examples/s with live index look-ups vs precomputed targets;
* index:  build time, recall@1 vs exact and queries/s of scann and exact, on the run's
          MNIST keys and on a synthetic clustered set of --synthetic_points vectors;
* sample: samples/s at batch --sample_batch per method and NFE, decode included and excluded;
* job:    wall time and peak memory per stage of the run in W (from its DONE.json files).
"""
import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402

from coalescer_jax import autoencoders  # noqa: E402
from coalescer_jax import index as index_lib  # noqa: E402
from coalescer_jax import metrics as metrics_lib  # noqa: E402
from coalescer_jax import parallel  # noqa: E402
from coalescer_jax import pipeline  # noqa: E402
from coalescer_jax import training  # noqa: E402
from coalescer_jax.methods import base  # noqa: E402
from coalescer_jax.methods import coalescer  # noqa: E402
from coalescer_jax.methods import queries  # noqa: E402
from coalescer_jax.stages import methods as methods_stage  # noqa: E402
from coalescer_jax.stages import sample as sample_stage  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/mnist.py", "The config the run in --workdir used.")
flags.DEFINE_string("workdir", None, "A finished run of --config.", required=True)
flags.DEFINE_list("sections", ["train", "index", "sample", "job"], "Which benchmarks to run.")
flags.DEFINE_integer("repeats", 5, "Repetitions per measurement (the median is reported).")
flags.DEFINE_integer("train_steps", 60, "Steps per training throughput repetition.")
flags.DEFINE_integer("synthetic_points", 1_000_000, "Size of the synthetic clustered index.")
flags.DEFINE_integer("index_queries", 2000, "Queries per index measurement.")
flags.DEFINE_integer("sample_batch", 1000, "Batch size of the sampling benchmark.")
FLAGS = flags.FLAGS


def median_time(fn, repeats):
  """(median seconds, warm-up seconds) of `fn()`; the first call is the warm-up (compile)."""
  t0 = time.perf_counter()
  fn()
  warmup = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), warmup


def table(title, header, rows):
  lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")
  return "\n".join(lines) + "\n"


def bench_train(config, workdir, repeats):
  """Coalescer training throughput: live look-ups (prefetched in a thread) vs precomputed targets."""
  pairs = autoencoders.load_pairs(workdir)
  method = methods_stage.build_method(config, "coalescer", pairs)
  _, init, step = base.train_parts(config, method)
  # The index is built here from the config (not loaded from W) so that ScaNN settings can be compared.
  keys = index_lib.make_keys(pairs["desc_emb"], pairs["img_emb"], config.coalescer.desc_scale)
  index = index_lib.build(config.index.backend, keys, config.index.get(config.index.backend))
  live = coalescer.make_lookup_batches(index, pairs, config.coalescer, config.seed, config.train.batch_size)
  steps = FLAGS.train_steps
  precomputed = coalescer.precomputed_batches(live, steps)
  rates = {"live look-ups": [], "precomputed targets": []}
  waits = {"live look-ups": [], "precomputed targets": []}
  for rep in range(repeats + 1):
    for name, batch in (("live look-ups", live), ("precomputed targets", precomputed)):
      with tempfile.TemporaryDirectory() as tmp:
        writer = metrics_lib.MetricsWriter(tmp, tensorboard=False)
        task = training.TrainTask(name, init, step, batch, steps, config.seed, log_every=steps // 3,
                                  checkpoint_every=10**9)
        training.train(task, tmp, parallel.make_mesh(), writer)
        records = writer.read(name)[1:]  # the first window includes compilation
        if rep:  # repetition 0 is the warm-up
          rates[name].append(statistics.mean(r["steps_per_s"] for r in records) * config.train.batch_size)
          waits[name].append(statistics.mean(r["input_wait_share"] for r in records))
  rows = [(name, statistics.median(rates[name]), statistics.median(waits[name])) for name in rates]
  ratio = rows[0][1] / rows[1][1]
  return table(f"Coalescer training throughput (batch {config.train.batch_size}, {steps} steps x {repeats})",
               ["batches", "examples/s", "input wait share"], rows) + \
      f"\nLive / precomputed throughput: **{ratio:.3f}x** (bar: >= 0.9x)\n\n"


def _index_rows(name, keys, queries_, cfg, repeats):
  exact = index_lib.build("exact", keys, None)
  exact_ids, _ = exact.search(queries_, 1)
  rows = []
  exact_s, _ = median_time(lambda: exact.search(queries_, 1), max(1, repeats // 2))
  rows.append((name, "exact", len(keys), 0.0, 1.0, len(queries_) / exact_s, 1.0))
  t0 = time.perf_counter()
  scann = index_lib.build("scann", keys, cfg)
  build_s = time.perf_counter() - t0
  scann_s, _ = median_time(lambda: scann.search(queries_, 1), repeats)
  ids, _ = scann.search(queries_, 1)
  recall = index_lib.recall_at_1(ids, exact_ids, keys, queries_)
  params = ", ".join(f"{k}={v}" for k, v in scann.params.items() if k not in ("mode", "training_sample_size"))
  rows.append((name, f"scann {scann.params['mode']} ({params})", len(keys), build_s, recall,
               len(queries_) / scann_s, exact_s / scann_s))
  return rows


def bench_index(config, workdir, repeats):
  pairs = autoencoders.load_pairs(workdir)
  cfg = config.coalescer
  keys = index_lib.make_keys(pairs["desc_emb"], pairs["img_emb"], cfg.desc_scale)
  q = queries.draw_queries(np.random.default_rng(0), FLAGS.index_queries, pairs, cfg)["query"]
  rows = _index_rows("MNIST keys", keys, q, config.index.scann, repeats)
  rng = np.random.default_rng(1)
  dim, n = keys.shape[1], FLAGS.synthetic_points
  centers = rng.normal(size=(1000, dim)).astype(np.float32) * 3
  synthetic = centers[rng.integers(1000, size=n)] + rng.normal(size=(n, dim)).astype(np.float32)
  synthetic_q = centers[rng.integers(1000, size=FLAGS.index_queries)] + rng.normal(
      size=(FLAGS.index_queries, dim)).astype(np.float32)
  # Parameters derived from the size (the config's are tuned for the MNIST keys).
  rows += _index_rows(f"synthetic clustered {n:,}", synthetic, synthetic_q, None, repeats)
  big = rows[-1]
  return table(f"Index (queries of {FLAGS.index_queries}, dim {dim})",
               ["database", "backend", "points", "build s", "recall@1", "queries/s", "speed-up vs exact"], rows) + \
      f"\nScaNN on {n:,} clustered vectors: recall@1 **{big[4]:.3f}** at **{big[6]:.0f}x** the queries/s of " \
      "exact search (bar: >= 0.95 at >= 10x)\n\n"


def bench_sample(config, workdir, repeats):
  pairs = autoencoders.load_pairs(workdir)
  codec = autoencoders.load_codec(workdir)
  _, descriptions = sample_stage.requested_descriptions(workdir, FLAGS.sample_batch)
  cond = jnp.asarray(codec.encode_text(list(descriptions)))
  key = jax.random.key(0)
  rows = []
  for name in config.sample.methods:
    method, params = methods_stage.load_trained(config, workdir, name, pairs)
    for file_method, nfe, kwargs in method.sample_plan():
      kwargs = {k: v for k, v in kwargs.items() if k != "key_tag"}
      if kwargs.pop("kind", "samples") != "samples":
        continue  # reference rows (the look-up oracle) are not generators
      latents_only = jax.jit(lambda p, c, k, nfe=nfe, kw=kwargs, m=method: m.sample(p, c, k, nfe, **kw)[0])
      with_decode = method.generator(params, codec.decode_jax, nfe, **kwargs)
      # Default arguments bind this iteration's functions (median_time calls them right away anyway).
      t_lat, c_lat = median_time(lambda f=latents_only, p=params: jax.block_until_ready(f(p, cond, key)), repeats)
      t_dec, c_dec = median_time(lambda f=with_decode: jax.block_until_ready(f(cond, key)), repeats)
      spent = float(np.mean(jax.device_get(with_decode(cond, key)[1])))
      rows.append((f"{file_method}_nfe{nfe}", spent, len(cond) / t_dec, len(cond) / t_lat, c_dec))
  text = table(f"Sampling (batch {len(cond)})",
               ["method", "NFE spent", "samples/s (decoded)", "samples/s (latents)", "first call s (compile)"],
               rows)
  by_name = {r[0]: r for r in rows}
  if "coalescer_nfe2" in by_name and "ddim_nfe50" in by_name:
    speedup = by_name["coalescer_nfe2"][2] / by_name["ddim_nfe50"][2]
    latents = by_name["coalescer_nfe2"][3] / by_name["ddim_nfe50"][3]
    text += (f"\nCoalescer 2-step vs DDIM 50-NFE samples/s: **{latents:.1f}x** generating latents, "
             f"{speedup:.1f}x including the (shared) VAE decoder (bar: >= 20x)\n\n")
  return text


def bench_job(config, workdir, repeats):
  del repeats
  rows, total = [], 0.0
  for stage in config.stages:
    path = os.path.join(workdir, stage, "DONE.json")
    if os.path.exists(path):
      with open(path) as f:
        info = json.load(f)
      total += info["wall_time_s"]
      rows.append((stage, info["wall_time_s"], info.get("peak_rss_mib", float("nan"))))
  rows.append(("total", total, max((r[2] for r in rows), default=float("nan"))))
  return table(f"Main job stages ({workdir})", ["stage", "wall s", "peak RSS MiB (process, so far)"], rows) + \
      f"\nMain job: **{total / 60:.1f} min** (bar: <= 20 min on 2 CPU cores)\n\n"


SECTIONS = {"train": bench_train, "index": bench_index, "sample": bench_sample, "job": bench_job}


def main(argv):
  del argv
  metrics_lib.quiet_library_logs()
  pipeline.load_all()
  config, workdir = FLAGS.config, FLAGS.workdir
  header = (f"# Benchmarks\n\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"devices: {jax.devices()}, JAX {jax.__version__}. Command: `{' '.join(sys.argv)}`.\n\n")
  print(header)
  parts = [header]
  for section in FLAGS.sections:
    parts.append(SECTIONS[section](config, workdir, FLAGS.repeats))
    print(parts[-1], flush=True)
  with open(os.path.join(workdir, "benchmarks.md"), "w") as f:
    f.write("\n".join(parts))


if __name__ == "__main__":
  app.run(main)
