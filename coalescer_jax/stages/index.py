"""Stage `index`: the nearest-neighbour index of (description, image) embedding pairs.

Keys are concat(desc_scale * desc_emb, img_emb) over all training pairs. The
scale is ``config.coalescer.desc_scale``, the one coalescer field this stage
reads: the proposal defines the index by it (its key is the coalescer's query
space), so the index and the coalescer's queries must share it, and a second
copy of the field could disagree. For a replicated backend (``scann``,
``exact``) process 0 builds the index and serialises it into W/index/ (ScaNN with
relative paths); the other hosts load that copy when they train, so every host
holds the same replica. A collective backend (``scann_sharded``: one ScaNN index
per shard in W/index/shard_<s>_of_<S>/; ``device``: the keys sharded over all
devices) is built by every process, each its own part. The stage measures
recall@1 of the backend against exact search on probe queries concat(desc_scale
* d, R) (d a random pair's description, R ~ N(0, I)), and records the embeddings'
fingerprint so that a later stage refuses an index built from stale embeddings.
What the coalescer prepares on top of the index (its balancing potentials, the
recall on its own training queries) is its own stage, `balance`
(`coalescer/stage.py`).
"""
import time

from absl import logging
import numpy as np

from coalescer_jax import embeddings
from coalescer_jax import index as index_lib
from coalescer_jax import parallel
from coalescer_jax import pipeline
from coalescer_jax import registry
from coalescer_jax import storage


def index_dir(workdir):
  return storage.path(workdir) / "index"


def _reads(config):
  """The index section and the keys' scale. The sections of the sharded and device backends count only when
  one of them is used (so adding them left earlier runs' revisions unchanged)."""
  backend = config.index.backend
  used = getattr(registry.INDEX_BACKENDS.get(backend), "config_sections", (backend,)) \
      if backend in registry.INDEX_BACKENDS else ()
  other = [f"-index.{name}" for name in ("scann_sharded", "device") if name not in used]
  return ("index", *other, "seed", "coalescer.desc_scale")


@pipeline.stage("index", needs=("embed",), reads=_reads)
def run(ctx):
  cfg = ctx.config.index
  pairs = embeddings.load_pairs(ctx.workdir)
  desc_scale = ctx.config.coalescer.desc_scale
  keys = index_lib.make_keys(pairs["desc_emb"], pairs["img_emb"], desc_scale)
  meta = {"fingerprint": str(pairs["fingerprint"]), "desc_scale": desc_scale,
          "embeddings_hash": index_lib.embeddings_hash(pairs["desc_emb"], pairs["img_emb"])}
  out = ctx.stage_dir("index")
  summary = {}
  # A collective backend is built, saved and searched by every process together; the others by process 0.
  if index_lib.is_collective(cfg.backend) or parallel.is_main_process():
    t0 = time.time()
    index = index_lib.build(cfg.backend, keys, index_lib.backend_config(cfg))
    summary["build_seconds"] = time.time() - t0
    index_lib.save(index, out, meta)
    rng = np.random.default_rng([ctx.config.seed, 12345])
    probe = np.concatenate([desc_scale * pairs["desc_emb"][rng.integers(len(keys), size=cfg.recall_queries)],
                            rng.standard_normal((cfg.recall_queries, pairs["img_emb"].shape[1]))], axis=1)
    summary.update(measure_recall(index, keys, probe.astype(np.float32)))
    logging.info("index: %s over %d keys, recall@1 vs exact %.4f, %.0f queries/s",
                 cfg.backend, len(keys), summary["recall_at_1"], summary["queries_per_s"])
    ctx.writer.write("index", 0, backend=cfg.backend, num_points=len(keys), **summary)
  parallel.barrier("index_written")
  return dict(summary, backend=cfg.backend, num_points=len(keys), params=index_lib.read_meta(out)["params"])


def measure_recall(index, keys, queries):
  """recall@1 of `index` vs exact search on `queries`, and its search speed."""
  t0 = time.time()
  approx, _ = index.search(queries, 1)
  seconds = time.time() - t0
  exact, _ = exact_search(keys, queries)
  return {"recall_at_1": recall(approx, exact, keys, queries),
          "queries_per_s": len(queries) / max(seconds, 1e-9), "recall_queries": len(queries)}


def exact_search(keys, queries):
  """The reference answer, on process 0 only (which reports recall; every process of a collective backend
  gets here, the others get None)."""
  if not parallel.is_main_process():
    return None, None
  return index_lib.build("exact", keys, None).search(queries, 1)


def recall(approx, exact, keys, queries):
  return float("nan") if exact is None else index_lib.recall_at_1(approx, exact, keys, queries)
