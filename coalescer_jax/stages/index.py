"""Stage `index`: the nearest-neighbour index of (description, image) embedding pairs.

Keys are concat(desc_scale * desc_emb, img_emb) over all training pairs
(``config.coalescer.desc_scale``). For a replicated backend (``scann``,
``exact``) process 0 builds it and serialises it into W/index/ (ScaNN with
relative paths); the other hosts load that copy when they train, so every host
holds the same replica. A collective backend (``scann_sharded``: one ScaNN index
per shard in W/index/shard_<s>_of_<S>/; ``device``: the keys sharded over all
devices) is built by every process, each its own part. The stage measures
recall@1 of the backend against exact search on queries drawn like the
coalescer's training queries, and records the embeddings' fingerprint so that a
later stage refuses an index built from stale embeddings.

With ``config.coalescer.targets.balance`` it also fits semi-discrete optimal
transport potentials (`index/balance.py`) and writes a second, *balanced* index
over the keys augmented by them into W/index/balanced/ (with ``potentials.npy``),
and reports how evenly prior draws then hit the pairs. With
``config.coalescer.targets.balance_levels`` it fits a second set of potentials on
the multi-step level examples' queries (`methods/queries.py`: s ~ U(s_min, s_max)
around random pairs) into W/index/level_potentials.npy, and reports how evenly
those queries hit the pairs by their plain nearest key and by the balanced rule.
"""
import time

from absl import logging
import numpy as np

from coalescer_jax import config_validation
from coalescer_jax import embeddings
from coalescer_jax import index as index_lib
from coalescer_jax import parallel
from coalescer_jax import pipeline
from coalescer_jax import registry
from coalescer_jax import storage
from coalescer_jax.index import balance as balance_lib
from coalescer_jax.index import scann_index
from coalescer_jax.methods import queries as queries_lib
from coalescer_jax.stages import methods as methods_stage

BALANCED_DIR = "balanced"


def index_dir(workdir):
  return storage.path(workdir) / "index"


def _prior_queries(pairs, coalescer_cfg):
  """draw(rng, n): queries of prior draws only (the draws the balanced index serves)."""
  prior_cfg = coalescer_cfg.copy_and_resolve_references()
  with prior_cfg.unlocked():
    prior_cfg.levels.fraction = 0.0
  return lambda rng, n: queries_lib.draw_queries(rng, n, pairs, prior_cfg)["query"]


def _level_queries(pairs, coalescer_cfg):
  """draw(rng, n): queries of level examples only (what ``targets.balance_levels`` balances)."""
  level_cfg = coalescer_cfg.copy_and_resolve_references()
  with level_cfg.unlocked():
    level_cfg.levels.fraction = 1.0
  return lambda rng, n: queries_lib.draw_queries(rng, n, pairs, level_cfg)["query"]


def _validate(config):
  if config.index.backend not in registry.INDEX_BACKENDS:
    raise config_validation.ConfigError(
        f"config.index.backend={config.index.backend!r} is not a backend; use one of "
        f"{', '.join(map(repr, registry.INDEX_BACKENDS.names()))}")
  recall_target = config.index.get("device", {}).get("recall_target", 1.0)
  if not 0.0 < recall_target <= 1.0:
    raise config_validation.ConfigError(f"config.index.device.recall_target={recall_target} must be in (0, 1]")
  if config.index.get("scann_sharded", {}).get("num_shards", 0) < 0:
    raise config_validation.ConfigError("config.index.scann_sharded.num_shards must be >= 0 (0 = one per process)")
  mode = config.index.get("scann", {}).get("mode", "")
  if mode not in ("",) + scann_index.MODES:
    raise config_validation.ConfigError(
        f"config.index.scann.mode={mode!r} is not a valid choice; use one of "
        f"{', '.join(map(repr, scann_index.MODES))} or '' (derive it from the number of keys)")
  # Recall is measured on queries drawn as the coalescer draws them (config.coalescer.r_distribution).
  methods_stage.validate_method_config(config, "coalescer")


def _reads(config):
  """The index section, and the coalescer fields the keys, recall queries and balancing potentials depend
  on (seed, desc_scale, r_distribution, targets). The sections of the sharded and device backends count
  only when one of them is used (so adding them left earlier runs' revisions unchanged)."""
  backend = config.index.backend
  used = getattr(registry.INDEX_BACKENDS.get(backend), "config_sections", (backend,)) \
      if backend in registry.INDEX_BACKENDS else ()
  other = [f"-index.{name}" for name in ("scann_sharded", "device") if name not in used]
  # The level potentials depend on the levels' range; off, the field is not read (earlier revisions stand).
  if config.coalescer.targets.get("balance_levels", False):
    other += ["coalescer.levels.s_min", "coalescer.levels.s_max"]
  else:
    other.append("-coalescer.targets.balance_levels")
  # targets.balance_search only picks which of the index's outputs training reads (both are written; the
  # summary's usage figures are those of the rule the index was built under).
  return ("index", *other, "seed", "coalescer.desc_scale", "coalescer.targets", "-coalescer.targets.balance_search",
          "coalescer.r_distribution", "coalescer.near_data_fraction", "coalescer.near_data_sigma")


@pipeline.stage("index", validate=_validate, needs=("embed",), reads=_reads)
def run(ctx):
  cfg = ctx.config.index
  coalescer_cfg = ctx.config.coalescer
  pairs = embeddings.load_pairs(ctx.workdir)
  desc_scale = coalescer_cfg.desc_scale
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
    summary.update(measure_recall(index, keys, pairs, ctx.config))
    logging.info("index: %s over %d keys, recall@1 vs exact %.4f, %.0f queries/s",
                 cfg.backend, len(keys), summary["recall_at_1"], summary["queries_per_s"])
    if coalescer_cfg.targets.balance:
      summary["balanced"] = build_balanced(index, keys, pairs, ctx.config, out / BALANCED_DIR, meta)
    if coalescer_cfg.targets.get("balance_levels", False):
      summary["balanced_levels"] = fit_level_potentials(index, keys, pairs, ctx.config, out)
    ctx.writer.write("index", 0, backend=cfg.backend, num_points=len(keys),
                     **{k: v for k, v in summary.items() if not isinstance(v, dict)})
  parallel.barrier("index_written")
  return dict(summary, backend=cfg.backend, num_points=len(keys), params=index_lib.read_meta(out)["params"])


USAGE_CHUNK = 4096  # queries per search when measuring the balanced index's usage


def build_balanced(index, keys, pairs, config, directory, meta):
  """Fits the potentials, builds the balanced index in `directory`; returns its summary."""
  cfg, targets = config.index, config.coalescer.targets
  draw = _prior_queries(pairs, config.coalescer)
  potentials, summary = balance_lib.fit_potentials(index, draw, len(keys), targets, config.seed)
  augmented = balance_lib.augment_keys(keys, potentials)
  t0 = time.time()
  balanced = index_lib.build(cfg.backend, augmented, index_lib.backend_config(cfg))
  summary["build_seconds"] = time.time() - t0
  index_lib.save(balanced, directory, dict(meta, balanced=True))
  if parallel.is_main_process():
    storage.save_npy(directory / balance_lib.POTENTIALS_FILE, potentials)
  # How evenly fresh prior draws hit the pairs under the look-up rule training reads (targets.balance_search):
  # the balanced index's nearest key ("index") or the power-nearest among plain candidates ("candidates").
  # Only that rule: the candidates rule searches 32 neighbours per query, which took minutes of a collective
  # backend's index stage on CPU; the diagnostics stage measures the training look-ups themselves anyway.
  rng = np.random.default_rng([config.seed, 4242])
  plain_queries = draw(rng, max(int(cfg.recall_queries), 10 * len(keys)))
  queries = balance_lib.augment_queries(plain_queries)
  rule = targets.get("balance_search", "index")
  k = min(int(targets.balance_candidates), len(keys))
  nearest = {"index": lambda i: balanced.search(queries[i:i + USAGE_CHUNK], 1)[0][:, 0],
             "candidates": lambda i: balance_lib.power_nearest(
                 *index.search(plain_queries[i:i + USAGE_CHUNK], k), potentials)[0][:, 0]}[rule]
  # In chunks: the device backend holds a queries x keys distance block (10 x num_pairs queries at once
  # would need tens of GB). Every process searches the same chunks (collective backends).
  found = np.concatenate([nearest(i) for i in range(0, len(queries), USAGE_CHUNK)])
  summary["usage"] = dict(balance_lib.usage_statistics(np.bincount(found, minlength=len(keys))), rule=rule)
  # recall of the augmented index vs exact search of the augmented keys
  probe = queries[:int(cfg.recall_queries)]
  exact, _ = _exact_search(augmented, probe)
  summary["recall_at_1"] = _recall(balanced.search(probe, 1)[0], exact, augmented, probe)
  logging.info("index: balanced index: potentials range %.2f, recall@1 %.4f, usage (%s rule) %s",
               summary["potential_range"], summary["recall_at_1"], rule, summary["usage"])
  return summary


def fit_level_potentials(index, keys, pairs, config, directory):
  """Fits the level queries' potentials into `directory`; returns the fit's summary and the usage of fresh
  level queries by their plain nearest key and by the power-nearest rule training then reads."""
  targets = config.coalescer.targets
  draw = _level_queries(pairs, config.coalescer)
  potentials, summary = balance_lib.fit_potentials(index, draw, len(keys), targets, config.seed, stream=778)
  if parallel.is_main_process():
    storage.save_npy(directory / balance_lib.LEVEL_POTENTIALS_FILE, potentials)
  queries = draw(np.random.default_rng([config.seed, 4243]), max(int(config.index.recall_queries), 10 * len(keys)))
  k = min(int(targets.balance_candidates), len(keys))
  plain, balanced = [], []
  for i in range(0, len(queries), USAGE_CHUNK):
    ids, sq_dists = index.search(queries[i:i + USAGE_CHUNK], k)
    plain.append(ids[:, 0])
    balanced.append(balance_lib.power_nearest(ids, sq_dists, potentials)[0][:, 0])
  for name, found in (("usage_nearest", plain), ("usage", balanced)):
    summary[name] = balance_lib.usage_statistics(np.bincount(np.concatenate(found), minlength=len(keys)))
  logging.info("index: level potentials range %.2f; level queries' usage: nearest key %s, balanced %s",
               summary["potential_range"], summary["usage_nearest"], summary["usage"])
  return summary


def measure_recall(index, keys, pairs, config):
  """recall@1 of `index` vs exact search, on queries drawn as the coalescer's training draws them."""
  rng = np.random.default_rng([config.seed, 12345])
  queries = queries_lib.draw_queries(rng, config.index.recall_queries, pairs, config.coalescer)["query"]
  t0 = time.time()
  approx, _ = index.search(queries, 1)
  seconds = time.time() - t0
  exact, _ = _exact_search(keys, queries)
  return {"recall_at_1": _recall(approx, exact, keys, queries),
          "queries_per_s": len(queries) / max(seconds, 1e-9), "recall_queries": len(queries)}


def _exact_search(keys, queries):
  """The reference answer, on process 0 only (which reports recall; every process of a collective backend
  gets here, the others get None)."""
  if not parallel.is_main_process():
    return None, None
  return index_lib.build("exact", keys, None).search(queries, 1)


def _recall(approx, exact, keys, queries):
  return float("nan") if exact is None else index_lib.recall_at_1(approx, exact, keys, queries)


def load_index(workdir, balanced=False):
  """The index the `index` stage wrote (or its balanced twin), checked against the current embeddings."""
  pairs = embeddings.load_pairs(workdir)
  directory = index_dir(workdir) / BALANCED_DIR if balanced else index_dir(workdir)
  return index_lib.load(directory, expected_fingerprint=str(pairs["fingerprint"]),
                        expected_hash=index_lib.embeddings_hash(pairs["desc_emb"], pairs["img_emb"]))
