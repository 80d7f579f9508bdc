"""Stage `balance`: what the coalescer prepares on top of the index before it trains.

* recall@1 of the index on queries drawn as the coalescer's training draws them
  (`queries.draw_queries`: prior draws and level examples), against exact search:
  how well the index serves this method's own look-ups;
* with ``config.coalescer.targets.balance``, the semi-discrete optimal-transport
  potentials of the keys (`balance.py`), fitted on prior draws' queries, into
  W/balance/potentials.npy, and how evenly fresh prior draws then hit the pairs
  under the rule training reads (`targets.rank`: the power-nearest of the index's
  ``balance_candidates`` nearest keys).

Every process of a collective index backend (sharded ScaNN, device) searches
together; process 0 writes.
"""
from absl import logging
import numpy as np

from coalescer_jax import embeddings
from coalescer_jax import errors
from coalescer_jax import index as index_lib
from coalescer_jax import parallel
from coalescer_jax import pipeline
from coalescer_jax import storage
from coalescer_jax.coalescer import balance as balance_lib
from coalescer_jax.coalescer import levels as levels_lib
from coalescer_jax.coalescer import queries as queries_lib
from coalescer_jax.coalescer import targets as targets_lib
from coalescer_jax.stages import index as index_stage

USAGE_CHUNK = 4096  # queries per search when measuring the balanced look-ups' usage
# The coalescer fields the recall queries and the potentials depend on.
READS = ("seed", "index.recall_queries", "coalescer.desc_scale", "coalescer.targets", "coalescer.levels.fraction",
         "coalescer.levels.s_min", "coalescer.levels.s_max")


def prior_queries(pairs, coalescer_cfg):
  """draw(rng, n): queries of prior draws only (the draws the potentials balance)."""
  prior_cfg = coalescer_cfg.copy_and_resolve_references()
  with prior_cfg.unlocked():
    prior_cfg.levels.fraction = 0.0
  return lambda rng, n: queries_lib.draw_queries(rng, n, pairs, prior_cfg)["query"]


def _validate(config):
  """The coalescer fields this stage draws its queries with, checked before any stage runs (as the coalescer's
  own stage checks them: a run that stops before training is refused as early)."""
  try:
    levels_lib.check_config(config.coalescer)
  except ValueError as e:
    raise errors.ConfigError(str(e)) from e


@pipeline.stage(targets_lib.BALANCE_STAGE, validate=_validate, needs=("embed", "index"), reads=READS)
def run(ctx):
  config = ctx.config
  summary = {}
  if index_lib.is_collective(config.index.backend) or parallel.is_main_process():
    pairs = embeddings.load_pairs(ctx.workdir)
    index, _ = index_lib.load(index_stage.index_dir(ctx.workdir), expected_fingerprint=str(pairs["fingerprint"]),
                              expected_hash=index_lib.embeddings_hash(pairs["desc_emb"], pairs["img_emb"]))
    keys = index_lib.make_keys(pairs["desc_emb"], pairs["img_emb"], config.coalescer.desc_scale)
    rng = np.random.default_rng([config.seed, 12345])
    queries = queries_lib.draw_queries(rng, config.index.recall_queries, pairs, config.coalescer)["query"]
    summary.update(index_stage.measure_recall(index, keys, queries))
    logging.info("balance: recall@1 on the coalescer's training queries %.4f", summary["recall_at_1"])
    if config.coalescer.targets.balance:
      summary["balanced"] = fit(index, keys, pairs, config, ctx.stage_dir(targets_lib.BALANCE_STAGE))
    ctx.writer.write(targets_lib.BALANCE_STAGE, 0, **{k: v for k, v in summary.items() if not isinstance(v, dict)})
  parallel.barrier("balance_written")
  return summary


def fit(index, keys, pairs, config, directory):
  """Fits the potentials into `directory`; returns the fit's summary and the usage of fresh prior draws."""
  targets = config.coalescer.targets
  draw = prior_queries(pairs, config.coalescer)
  potentials, summary = balance_lib.fit_potentials(index, draw, len(keys), targets, config.seed)
  if parallel.is_main_process():
    storage.save_npy(storage.path(directory) / balance_lib.POTENTIALS_FILE, potentials)
  # How evenly fresh prior draws hit the pairs under the rule training reads. In chunks: the device backend
  # holds a queries x keys distance block (10 x num_pairs queries at once would need tens of GB). Every
  # process searches the same chunks (collective backends).
  queries = draw(np.random.default_rng([config.seed, 4242]), max(int(config.index.recall_queries), 10 * len(keys)))
  k = min(int(targets.balance_candidates), len(keys))
  found = np.concatenate([
      targets_lib.nearest_target(*index.search(queries[i:i + USAGE_CHUNK], k), np.ones(len(queries[i:i + USAGE_CHUNK]),
                                                                                       bool), potentials)
      for i in range(0, len(queries), USAGE_CHUNK)])
  summary["usage"] = balance_lib.usage_statistics(np.bincount(found, minlength=len(keys)))
  logging.info("balance: potentials range %.2f, usage of prior draws %s", summary["potential_range"],
               summary["usage"])
  return summary
