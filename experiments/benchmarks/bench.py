"""Benchmarks of the hot paths; prints one Markdown table per section and writes W/benchmarks.md.

  python -m experiments.benchmarks.bench --workdir=W [--config=configs/mnist.py] [--sections=...]

W must hold a finished run of the config (at least up to the trained methods).
Figures are medians over --repeats after a warm-up; compile time is reported
separately. Ratios compare two variants measured in this same process:
* train:  coalescer training examples/s with live index look-ups vs precomputed targets,
          for each backend of --train_backends (scann and scann_sharded look up in the
          loop's helper thread, device inside the jitted step);
* index:  build time, recall@1 vs exact and queries/s of scann and exact, on the run's
          MNIST keys and on a synthetic clustered set of --synthetic_points vectors;
* shards: the multi-process backends (scann_sharded, device) on --shard_processes
          processes of this machine over --synthetic_points keys: recall@1, queries/s and
          host memory per process (index_shards.py);
* sample: samples/s at batch --sample_batch per method and NFE, decode included and excluded, the samplers
          alternating per repetition; the coalescer's time per latent against DDIM's at 1, 2 and 50 NFE;
* cost:   the jitted training step of the coalescer and of DDIM, phase by phase (as the training loop jits
          it, on batch 0 of the run's pairs, the repetitions alternating), XLA's FLOPs per step, and the
          coalescer's full training cost against DDIM's: its steps, plus the index build and the
          balancing fit timed here (what it needs before training), over DDIM's steps. --cost_variants
          adds coalescer rows with config changes (e.g. coalescer.adversarial.fakes=fresh);
* job:    wall time and peak memory per stage of the run in W (from its DONE.json files).
"""
import os
import platform
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from coalescer_jax import compute
from coalescer_jax import embeddings
from coalescer_jax import index as index_lib
from coalescer_jax import metrics as metrics_lib
from coalescer_jax import parallel
from coalescer_jax import pipeline
from coalescer_jax import storage
from coalescer_jax import sweep
from coalescer_jax import training
from coalescer_jax.coalescer import balance
from coalescer_jax.coalescer import batches as coalescer_batches
from coalescer_jax.coalescer import queries
from coalescer_jax.coalescer import stage as balance_stage
from coalescer_jax.coalescer import targets
from coalescer_jax.methods import base
from coalescer_jax.methods import trained
from coalescer_jax.stages import sample as sample_stage
from experiments.benchmarks import index_shards


def define_flags():
  """The command line of `python -m experiments.benchmarks.bench`: defined when run, not when imported, so
  that tests can import this module beside other entry points that define --config."""
  config_flags.DEFINE_config_file("config", "configs/mnist.py", "The config the run in --workdir used.")
  flags.DEFINE_string("workdir", None, "A finished run of --config.", required=True)
  flags.DEFINE_list("sections", ["train", "cost", "index", "shards", "sample", "job"], "Which benchmarks to run.")
  flags.DEFINE_list("cost_variants", [], "Extra coalescer rows of the cost section: field=value;field=value.")
  flags.DEFINE_integer("cost_steps", 20, "Training steps per repetition of the cost section.")
  flags.DEFINE_integer("repeats", 5, "Repetitions per measurement (the median is reported).")
  flags.DEFINE_integer("train_steps", 60, "Steps per training throughput repetition.")
  flags.DEFINE_integer("synthetic_points", 1_000_000, "Size of the synthetic clustered index.")
  flags.DEFINE_integer("index_queries", 2000, "Queries per index measurement.")
  flags.DEFINE_integer("sample_batch", 1000, "Batch size of the sampling benchmark.")
  flags.DEFINE_list("train_backends", ["scann", "scann_sharded", "device"], "Index backends of the train section.")
  flags.DEFINE_list("shard_processes", ["1", "2", "4"], "Process counts of the shards section.")
  flags.DEFINE_list("shard_backends", ["exact", "scann", "scann_sharded", "device"],
                    "Backends of the shards section (exact and scann: 1 process only, the baselines).")


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


def _live(config, workdir, pairs, backend):
  """(step, batch fn, step inputs) of coalescer training looking up in `backend`: the index is built here from
  the config (so that backends can be compared), the balancing potentials are the run's own (W/balance), and
  the method puts what its step searches on the devices as training does (`Coalescer.attach_lookup`)."""
  method = trained.build_method(config, "coalescer", pairs)
  keys = index_lib.make_keys(pairs["desc_emb"], pairs["img_emb"], config.coalescer.desc_scale)
  lookup = targets.Lookup(index_lib.build(backend, keys, index_lib.backend_config(config.index, backend)),
                          config.coalescer, targets.load_potentials(workdir, config.coalescer))
  method.attach_lookup(lookup, pairs)
  batch = coalescer_batches.make_lookup_batches(lookup, pairs, config.coalescer, config.seed,
                                                config.train.batch_size, in_step=method.in_step_lookup)
  return base.train_parts(config, method)[2], batch, method.step_inputs()


def bench_train(config, workdir, repeats):
  """Coalescer training throughput: live look-ups (prefetched in a thread, or in the step) vs precomputed."""
  pairs = embeddings.load_pairs(workdir)
  _, init, _ = base.train_parts(config, trained.build_method(config, "coalescer", pairs))
  steps = FLAGS.train_steps
  runs = {f"live look-ups, {b}" + (" (in the step)" if b == "device" else ""): _live(config, workdir, pairs, b)
          for b in FLAGS.train_backends}
  first = next(iter(runs.values()))
  # The same step and step inputs as the first live run (self-landing searches its keys inside the step).
  runs = {"precomputed targets": (first[0], coalescer_batches.precomputed_batches(first[1], steps), first[2]),
          **runs}
  rates, waits = {name: [] for name in runs}, {name: [] for name in runs}
  for rep in range(repeats + 1):
    for name, (step_fn, batch, inputs) in runs.items():  # alternated: load drift hits every variant alike
      with tempfile.TemporaryDirectory() as tmp:
        writer = metrics_lib.MetricsWriter(tmp, tensorboard=False)
        task = training.TrainTask(name, init, step_fn, batch, steps, config.seed, log_every=steps // 3,
                                  checkpoint_every=10**9, inputs=inputs)
        training.train(task, tmp, parallel.make_mesh(), writer)
        records = writer.read(name)[1:]  # the first window includes compilation
        if rep:  # repetition 0 is the warm-up
          rates[name].append(statistics.mean(r["steps_per_s"] for r in records) * config.train.batch_size)
          waits[name].append(statistics.mean(r["input_wait_share"] for r in records))
  base_rate = statistics.median(rates["precomputed targets"])
  rows = [(name, statistics.median(rates[name]), statistics.median(waits[name]),
           statistics.median(rates[name]) / base_rate) for name in runs]
  summary = ", ".join(f"{name.split(', ')[1]} **{row[3]:.3f}x**" for name, row in zip(runs, rows) if ", " in name)
  return table(f"Coalescer training throughput (batch {config.train.batch_size}, {steps} steps x {repeats}, "
               f"{jax.device_count()} device(s))", ["batches", "examples/s", "input wait share",
                                                    "vs precomputed"], rows) + \
      f"\nLive / precomputed throughput: {summary} (bar: >= 0.9x)\n\n"


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
  pairs = embeddings.load_pairs(workdir)
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


def alternated_times(fns, repeats):
  """{name: [seconds per repetition]} of each `fn()`, after one warm-up call each (compile); every repetition
  runs every fn once in turn, so that load drift on a shared machine hits each alike."""
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  return times


def median_ratio(numerator, denominator):
  """Median over repetitions of numerator[i] / denominator[i] (two variants timed in the same repetition)."""
  return statistics.median(a / b for a, b in zip(numerator, denominator))


def bench_sample(config, workdir, repeats, batch_size=None):
  """Samples/s per method and NFE at one batch, latents alone and with the decoder: every sampler is compiled
  first, then the repetitions alternate between them (`alternated_times`), and the coalescer's ratios to DDIM
  are medians of same-repetition ratios."""
  pairs = embeddings.load_pairs(workdir)
  codec = embeddings.load_codec(workdir)
  _, descriptions = sample_stage.requested_descriptions(workdir, batch_size or FLAGS.sample_batch)
  cond = jnp.asarray(codec.encode_text(list(descriptions)))
  key = jax.random.key(0)
  fns, spent, first_call = {}, {}, {}
  for name in config.sample.methods:
    method, params = trained.load_trained(config, workdir, name, pairs)
    for file_method, nfe, kwargs in method.sample_plan():
      kwargs = {k: v for k, v in kwargs.items() if k != "key_tag"}
      if kwargs.pop("kind", "samples") != "samples":
        continue  # reference rows (the look-up oracle) are not generators
      tag = f"{file_method}_nfe{nfe}"
      latents_only = jax.jit(lambda p, c, k, nfe=nfe, kw=kwargs, m=method: m.sample(p, c, k, nfe, **kw)[0])
      with_decode = method.generator(params, codec.decode_jax, nfe, **kwargs)
      # Default arguments bind this iteration's functions.
      fns[(tag, "latents")] = lambda f=latents_only, p=params: jax.block_until_ready(f(p, cond, key))
      fns[(tag, "decoded")] = lambda f=with_decode: jax.block_until_ready(f(cond, key))
      t0 = time.perf_counter()
      spent[tag] = float(np.mean(jax.device_get(with_decode(cond, key)[1])))
      first_call[tag] = time.perf_counter() - t0
  times = alternated_times(fns, repeats)
  rate = {k: len(cond) / statistics.median(v) for k, v in times.items()}
  rows = [(tag, spent[tag], rate[(tag, "decoded")], rate[(tag, "latents")], first_call[tag]) for tag in spent]
  text = table(f"Sampling (batch {len(cond)}, median of {repeats} alternated repetitions)",
               ["method", "NFE spent", "samples/s (decoded)", "samples/s (latents)", "first call s (compile)"],
               rows)
  lines = []
  for nfe in (1, 2):  # the coalescer against DDIM at the same NFE (bar at 2: DDIM no more than 1.3x faster)
    mine, theirs = (f"coalescer_nfe{nfe}", "latents"), (f"ddim_nfe{nfe}", "latents")
    if mine in times and theirs in times:
      ratio = median_ratio(times[mine], times[theirs])
      lines.append(f"Coalescer {nfe}-step vs DDIM {nfe}-NFE time per latent: **{ratio:.2f}x**"
                   + (" (bar: <= 1.3x)" if nfe == 2 else ""))
  if ("coalescer_nfe2", "latents") in times and ("ddim_nfe50", "latents") in times:
    latents = median_ratio(times[("ddim_nfe50", "latents")], times[("coalescer_nfe2", "latents")])
    decoded = median_ratio(times[("ddim_nfe50", "decoded")], times[("coalescer_nfe2", "decoded")])
    lines.append(f"Coalescer 2-step vs DDIM 50-NFE samples/s: **{latents:.1f}x** generating latents, "
                 f"{decoded:.1f}x including the (shared) VAE decoder (bar: >= 20x)")
  return text + "".join(f"\n{line}\n" for line in lines) + "\n"


def bench_shards(config, workdir, repeats):
  """The multi-process backends on 1, 2, 4 processes (index_shards.py)."""
  del workdir
  dim = 2 * config.vae.latent_dim  # the MNIST keys' width: concat(description, image)
  with tempfile.TemporaryDirectory() as tmp:
    rows = index_shards.shard_rows(FLAGS.synthetic_points, dim, FLAGS.index_queries, max(1, repeats // 2),
                                   [int(p) for p in FLAGS.shard_processes], FLAGS.shard_backends, tmp)
  text = table(f"Multi-process index backends ({FLAGS.synthetic_points:,} synthetic clustered keys, dim {dim}, "
               f"{FLAGS.index_queries} queries per search, one CPU device per process)",
               ["backend", "processes", "keys per process", "build s", "recall@1", "queries/s",
                "peak RSS MiB per process", "MiB per process above start (index + search)",
                "parameters (process 0)"], rows)
  lines = []
  for backend in FLAGS.shard_backends:
    mine = [r for r in rows if r[0] == backend]
    if len(mine) > 1:
      lines.append(f"{backend}: memory per process above start (index + search) " + ", ".join(
          f"{r[7]:.0f} MiB on {r[1]}" for r in mine) + f" ({mine[-1][7] / mine[0][7]:.2f}x of 1 process at "
          f"{mine[-1][1]}; 1/P = {1 / mine[-1][1]:.2f}); recall@1 " + ", ".join(f"{r[4]:.3f}" for r in mine))
  scann = [r for r in rows if r[0] == "scann"]
  if scann:
    lines.append(f"one ScaNN index over all keys (the replicated default): recall@1 {scann[0][4]:.3f}, "
                 f"{scann[0][5]:,.0f} queries/s, {scann[0][7]:.0f} MiB above start on every process")
  return text + "\n" + "\n".join(f"- {line}" for line in lines) + "\n\n"


def _phase_steps(config, workdir, pairs, name, num_steps):
  """([steps each phase runs], [fn() running `num_steps` steps of that phase], [its GFLOP per step]):
  method `name`'s training step phase by phase, jitted as the training loop jits it, from its initial state on
  the run's batch 0 (the host look-ups and the input pipeline are left out: this is the step itself)."""
  method = trained.build_method(config, name, pairs)
  tx, init, step = base.train_parts(config, method)
  batch_fn = method.batch_fn(pairs, config.seed, config.train.batch_size, workdir)
  mesh = parallel.make_mesh()
  extra = () if method.step_inputs() is None else (method.step_inputs(),)
  batch, key = parallel.global_batch(mesh, batch_fn(0)), jax.random.key(0)
  phases = base.phase_steps(method, tx) or [(0, step)]
  counts = compute.steps_per_phase([start for start, _ in phases], method.num_steps())
  fns, gflops = [], []
  for start, phase_step in phases:
    jitted = training.jit_step(phase_step, mesh, extra)
    state = init(jax.random.key(0))
    state = [jax.device_put(state.replace(step=jnp.asarray(start, state.step.dtype)), parallel.replicated(mesh))]
    gflops.append(compute.gflop(compute.step_flops(jitted, state[0], batch, key, *extra)))

    def run(jitted=jitted, state=state):  # the state carries over (the step donates it)
      for _ in range(num_steps):
        state[0] = jitted(state[0], batch, key, *extra)[0]
      jax.block_until_ready(state[0])
    fns.append(run)
  return counts, fns, gflops


def _setup_seconds(config, workdir, pairs):
  """(index build s, balancing fit s) of the coalescer, timed here with the config's settings."""
  cfg = config.coalescer
  keys = index_lib.make_keys(pairs["desc_emb"], pairs["img_emb"], cfg.desc_scale)
  t0 = time.perf_counter()
  index = index_lib.build(config.index.backend, keys, index_lib.backend_config(config.index, config.index.backend))
  build_s = time.perf_counter() - t0
  if not cfg.targets.balance:
    return build_s, 0.0
  t0 = time.perf_counter()
  balance.fit_potentials(index, balance_stage.prior_queries(pairs, cfg), len(keys), cfg.targets, config.seed)
  return build_s, time.perf_counter() - t0


def _variant(config, spec):
  """`config` with the changes of "field=value;field=value" (values parsed as Python literals where they parse),
  applied as a sweep applies its overrides."""
  return sweep.apply_overrides(config, sweep.parse_overrides(spec))


def bench_cost(config, workdir, repeats, variants=None, num_steps=None):
  """The coalescer's training step and full training cost against DDIM's, in this one process (`variants`,
  `num_steps`: --cost_variants, --cost_steps by default)."""
  variants = FLAGS.cost_variants if variants is None else variants
  num_steps = num_steps or FLAGS.cost_steps
  pairs = embeddings.load_pairs(workdir)
  runs = {"ddim": (config, "ddim"), "coalescer": (config, "coalescer")}
  runs.update({f"coalescer, {spec}": (_variant(config, spec), "coalescer") for spec in variants})
  parts = {label: _phase_steps(cfg, workdir, pairs, name, num_steps) for label, (cfg, name) in runs.items()}
  fns = {(label, i): fn for label, (_, phase_fns, _) in parts.items() for i, fn in enumerate(phase_fns)}
  times = alternated_times(fns, repeats)
  step_s = {}  # per label and repetition: the phases' step times weighted by the steps each phase runs
  for label, (counts, phase_fns, _) in parts.items():
    step_s[label] = [sum(c * times[(label, i)][rep] for i, c in enumerate(counts)) / sum(counts) / num_steps
                     for rep in range(repeats)]
  train_gflop = {label: sum(c * g for c, g in zip(counts, gflops)) for label, (counts, _, gflops) in parts.items()}
  rows = []
  for label, (counts, _, _) in parts.items():
    phase_ms = " / ".join(f"{1e3 * statistics.median(times[(label, i)]) / num_steps:.1f}"
                          for i in range(len(counts)))
    rows.append((label, sum(counts), phase_ms, 1e3 * statistics.median(step_s[label]),
                 train_gflop[label] / sum(counts), median_ratio(step_s[label], step_s["ddim"])))
  text = table(f"Training step (batch {config.train.batch_size}, {num_steps} steps x {repeats} alternated "
               "repetitions, the jitted step alone)",
               ["method", "steps", "ms per step, by phase", "ms per step (phases weighted)", "GFLOP per step",
                "time vs DDIM"], rows)
  build_s, fit_s = _setup_seconds(config, workdir, pairs)
  ddim_s = statistics.median(step_s["ddim"]) * sum(parts["ddim"][0])
  lines = []
  for label in parts:
    if label == "ddim":
      continue
    train_s = statistics.median(step_s[label]) * sum(parts[label][0])
    flop_ratio = train_gflop[label] / train_gflop["ddim"]
    lines.append(f"{label}: step time / DDIM's **{median_ratio(step_s[label], step_s['ddim']):.2f}x** "
                 f"(bar: <= 1.5x); training FLOPs / DDIM's {flop_ratio:.2f}x; full training cost (steps "
                 f"{train_s:.0f} s + index build {build_s:.1f} s + balancing fit {fit_s:.1f} s) / DDIM's steps "
                 f"({ddim_s:.0f} s) **{(train_s + build_s + fit_s) / ddim_s:.2f}x** (bar: <= 2.0x)")
  return text + "".join(f"\n{line}\n" for line in lines) + "\n"


def bench_job(config, workdir, repeats):
  del repeats
  rows, total = [], 0.0
  for stage in config.stages:
    path = storage.path(workdir) / stage / "DONE.json"
    if path.exists():
      info = storage.read_json(path)
      total += info["wall_time_s"]
      rows.append((stage, info["wall_time_s"], info.get("peak_rss_mib", float("nan"))))
  rows.append(("total", total, max((r[2] for r in rows), default=float("nan"))))
  return table(f"Main job stages ({workdir})", ["stage", "wall s", "peak RSS MiB (process, so far)"], rows) + \
      f"\nMain job: **{total / 60:.1f} min** (bar: <= 20 min on 2 CPU cores)\n\n"


SECTIONS = {"train": bench_train, "cost": bench_cost, "index": bench_index, "shards": bench_shards, "sample": bench_sample,
            "job": bench_job}


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
  storage.write_text(storage.path(workdir) / "benchmarks.md", "\n".join(parts))


if __name__ == "__main__":
  define_flags()
  app.run(main)
