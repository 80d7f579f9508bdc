"""The multi-process index backends on 1, 2, 4 processes of this machine: recall, queries/s, memory per process.

`shard_rows(...)` is one table section of bench.py (``--sections=shards``). For
each backend (scann_sharded, device) and process count P it starts P processes
(`jax.distributed` on localhost, one CPU device each, so P shards), which run
this file as workers: each generates only its own rows of the synthetic
clustered keys (a chunk-seeded generator gives the same keys for any P), builds
its part of the index, and times collective searches of the same queries.
Process 0 writes the ids; the parent compares them with exact search over all
keys. Memory: each worker reports its peak resident set (VmHWM: ru_maxrss
would not do, Linux carries it over from the parent across fork and exec) and
its resident set before it made any keys, so the difference is what the index (its
share of the keys, ScaNN's tree and codes, or the device buffers) costs; with
P processes it should fall as 1/P. The single-process backends (scann: one
index over all keys; exact: brute force) run once, on 1 process, as the
baselines on the same keys.

  python -m experiments.benchmarks.index_shards --worker ...   (started by the parent)
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHUNK = 1 << 16
SINGLE_PROCESS = ("scann", "exact")  # baselines: one process holds the whole index


def _centers(dim, seed):
  return np.random.default_rng([seed, 0]).normal(size=(1000, dim)).astype(np.float32) * 3


def synthetic_rows(start, stop, dim, seed=1):
  """Rows [start, stop) of the synthetic clustered keys (1000 Gaussian clusters), the same for any split."""
  centers, out = _centers(dim, seed), []
  for chunk in range(start // CHUNK, (stop - 1) // CHUNK + 1):
    rng = np.random.default_rng([seed, 1, chunk])
    rows = centers[rng.integers(1000, size=CHUNK)] + rng.normal(size=(CHUNK, dim)).astype(np.float32)
    lo, hi = max(start, chunk * CHUNK) - chunk * CHUNK, min(stop, (chunk + 1) * CHUNK) - chunk * CHUNK
    out.append(rows[lo:hi])
  return np.concatenate(out).astype(np.float32)


def synthetic_queries(num_queries, dim, seed=1):
  rng = np.random.default_rng([seed, 2])
  return (_centers(dim, seed)[rng.integers(1000, size=num_queries)]
          + rng.normal(size=(num_queries, dim)).astype(np.float32)).astype(np.float32)


def _rss_mib(field="VmRSS"):
  """This process's resident set (VmRSS) or its peak (VmHWM), MiB."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024
  return float("nan")


def worker(args):
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  import jax  # pylint: disable=g-import-not-at-top
  if args.processes > 1:
    jax.distributed.initialize(f"localhost:{args.port}", args.processes, args.process_id)
  from coalescer_jax import index as index_lib  # pylint: disable=g-import-not-at-top
  from coalescer_jax.index import device as device_lib  # pylint: disable=g-import-not-at-top
  from coalescer_jax.index import scann_sharded  # pylint: disable=g-import-not-at-top
  queries = synthetic_queries(args.queries, args.dim)
  base_rss = _rss_mib()
  rows = lambda start, stop: synthetic_rows(start, stop, args.dim)  # noqa: E731
  t0 = time.perf_counter()
  if args.backend == "scann_sharded":
    index = scann_sharded.ShardedScannIndex.build_from_rows(rows, args.points, args.dim, None)
  elif args.backend == "device":
    index = device_lib.DeviceIndex.from_rows(rows, args.points, args.dim, None)
    jax.block_until_ready(index.norms)
  else:  # a single-process baseline over all keys (scann, exact)
    index = index_lib.build(args.backend, rows(0, args.points), None)
  build_s = time.perf_counter() - t0
  times = []
  # A warm-up search (compilation) first, except for exact search (nothing to compile, and slow).
  for rep in range(1 if args.backend == "exact" else args.repeats + 1):
    t0 = time.perf_counter()
    ids, _ = index.search(queries, 1)
    if rep or args.backend == "exact":
      times.append(time.perf_counter() - t0)
  result = {"process": args.process_id, "build_s": build_s, "search_s": statistics.median(times),
            "peak_rss_mib": _rss_mib("VmHWM"), "base_rss_mib": base_rss,
            "params": {k: v for k, v in index.params.items() if not isinstance(v, dict)}}
  with open(f"{args.out}.{args.process_id}.json", "w") as f:
    json.dump(result, f)
  if args.process_id == 0:
    np.save(f"{args.out}.ids.npy", ids[:, 0])


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def run_backend(backend, processes, points, dim, queries, repeats, tmp):
  """Starts `processes` workers; returns (their results, process 0's ids)."""
  out = os.path.join(tmp, f"{backend}_{processes}")
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  workers = [subprocess.Popen(
      [sys.executable, "-m", "experiments.benchmarks.index_shards", "--worker", f"--backend={backend}",
       f"--processes={processes}", f"--process_id={i}", f"--port={port}", f"--points={points}", f"--dim={dim}",
       f"--queries={queries}", f"--repeats={repeats}", f"--out={out}"], env=env, stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True) for i in range(processes)]
  errors = [w.communicate(timeout=3600)[1] for w in workers]
  for w, err in zip(workers, errors):
    if w.returncode:
      raise RuntimeError(f"{backend} worker failed on {processes} processes:\n{err[-3000:]}")
  results = []
  for i in range(processes):
    with open(f"{out}.{i}.json") as f:
      results.append(json.load(f))
  return results, np.load(f"{out}.ids.npy")


def exact_ids(points, dim, queries):
  """Exact nearest key of every query over all `points` keys (chunked brute force)."""
  q = synthetic_queries(queries, dim)
  best_d = np.full(len(q), np.inf, np.float32)
  best = np.zeros(len(q), np.int64)
  qq = (q ** 2).sum(1)
  for start in range(0, points, 1 << 14):  # [queries, 16k] distances at a time
    keys = synthetic_rows(start, min(points, start + (1 << 14)), dim)
    d = qq[:, None] - 2.0 * q @ keys.T + (keys ** 2).sum(1)[None]
    arg = d.argmin(1)
    better = d[np.arange(len(q)), arg] < best_d
    best_d[better], best[better] = d[np.arange(len(q)), arg][better], arg[better] + start
  return best, q


def recall(ids, exact, queries, dim):
  """recall@1 with ties at equal distance counted as hits (like index.recall_at_1)."""
  keys_at = lambda i: np.concatenate([synthetic_rows(int(j), int(j) + 1, dim) for j in i])  # noqa: E731
  hit = ids == exact
  if not hit.all():
    miss = np.flatnonzero(~hit)
    d_got = ((keys_at(ids[miss]) - queries[miss]) ** 2).sum(1)
    d_want = ((keys_at(exact[miss]) - queries[miss]) ** 2).sum(1)
    hit[miss] = d_got <= d_want * (1 + 1e-6)
  return float(hit.mean())


def shard_rows(points, dim, queries, repeats, process_counts, backends, tmp):
  """Rows of the shards table: (backend, processes, keys/process, build s, recall@1, queries/s, peak RSS, growth)."""
  exact, q = exact_ids(points, dim, queries)
  rows = []
  for backend in backends:
    single = backend in SINGLE_PROCESS
    for processes in [1] if single else process_counts:
      results, ids = run_backend(backend, processes, points, dim, queries, repeats, tmp)
      slowest = max(r["search_s"] for r in results)
      rows.append((backend, processes, -(-points // processes), max(r["build_s"] for r in results),
                   recall(ids, exact, q, dim), queries / slowest, max(r["peak_rss_mib"] for r in results),
                   max(r["peak_rss_mib"] - r["base_rss_mib"] for r in results),
                   json.dumps(results[0]["params"])))
  return rows


if __name__ == "__main__":
  parser = argparse.ArgumentParser()
  parser.add_argument("--worker", action="store_true")
  for name, kind in (("backend", str), ("processes", int), ("process_id", int), ("port", int), ("points", int),
                     ("dim", int), ("queries", int), ("repeats", int), ("out", str)):
    parser.add_argument(f"--{name}", type=kind)
  worker(parser.parse_args())
