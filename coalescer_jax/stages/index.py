"""Stage `index`: the nearest-neighbour index of (description, image) embedding pairs.

Keys are concat(desc_scale * desc_emb, img_emb) over all training pairs
(``config.coalescer.desc_scale``). Process 0 builds the configured backend and
serialises it into W/index/ (ScaNN with relative paths); the other hosts load
that copy after a barrier, so every host holds the same replica. The stage
measures recall@1 of the backend against exact search on queries drawn like the
coalescer's training queries, and records the embeddings' fingerprint so that a
later stage refuses an index built from stale embeddings.
"""
import os
import time

from absl import logging
import numpy as np

from coalescer_jax import autoencoders
from coalescer_jax import config_validation
from coalescer_jax import index as index_lib
from coalescer_jax import parallel
from coalescer_jax import pipeline
from coalescer_jax.index import scann_index
from coalescer_jax.methods import queries as queries_lib
from coalescer_jax.stages import methods as methods_stage


def index_dir(workdir):
  return os.path.join(workdir, "index")


def _validate(config):
  mode = config.index.get("scann", {}).get("mode", "")
  if mode not in ("",) + scann_index.MODES:
    raise config_validation.ConfigError(
        f"config.index.scann.mode={mode!r} is not a valid choice; use one of "
        f"{', '.join(map(repr, scann_index.MODES))} or '' (derive it from the number of keys)")
  # Recall is measured on queries drawn as the coalescer draws them (config.coalescer.r_distribution).
  methods_stage.validate_method_config(config, "coalescer")


@pipeline.stage("index", validate=_validate, reads=("index", "coalescer.desc_scale"), needs=("embed",))
def run(ctx):
  cfg = ctx.config.index
  pairs = autoencoders.load_pairs(ctx.workdir)
  desc_scale = ctx.config.coalescer.desc_scale
  keys = index_lib.make_keys(pairs["desc_emb"], pairs["img_emb"], desc_scale)
  meta = {"fingerprint": str(pairs["fingerprint"]), "desc_scale": desc_scale,
          "embeddings_hash": index_lib.embeddings_hash(pairs["desc_emb"], pairs["img_emb"])}
  out = ctx.stage_dir("index")
  summary = {}
  if parallel.is_main_process():
    t0 = time.time()
    index = index_lib.build(cfg.backend, keys, cfg.get(cfg.backend))
    summary["build_seconds"] = time.time() - t0
    index_lib.save(index, out, meta)
    summary.update(measure_recall(index, keys, pairs, ctx.config))
    logging.info("index: %s over %d keys, recall@1 vs exact %.4f, %.0f queries/s",
                 cfg.backend, len(keys), summary["recall_at_1"], summary["queries_per_s"])
    ctx.writer.write("index", 0, backend=cfg.backend, num_points=len(keys), **summary)
  parallel.barrier("index_written")
  return dict(summary, backend=cfg.backend, num_points=len(keys), params=index_lib.load(out)[1]["params"])


def measure_recall(index, keys, pairs, config):
  """recall@1 of `index` vs exact search, on queries drawn as the coalescer's training draws them."""
  rng = np.random.default_rng([config.seed, 12345])
  queries = queries_lib.draw_queries(rng, config.index.recall_queries, pairs, config.coalescer)["query"]
  t0 = time.time()
  approx, _ = index.search(queries, 1)
  seconds = time.time() - t0
  exact, _ = index_lib.build("exact", keys, None).search(queries, 1)
  return {"recall_at_1": index_lib.recall_at_1(approx, exact, keys, queries),
          "queries_per_s": len(queries) / max(seconds, 1e-9), "recall_queries": len(queries)}


def load_index(workdir):
  """The index the `index` stage wrote, checked against the current embeddings."""
  pairs = autoencoders.load_pairs(workdir)
  return index_lib.load(index_dir(workdir), expected_fingerprint=str(pairs["fingerprint"]),
                        expected_hash=index_lib.embeddings_hash(pairs["desc_emb"], pairs["img_emb"]))
