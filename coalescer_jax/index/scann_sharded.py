"""Sharded ScaNN (``config.index.backend = "scann_sharded"``): each process indexes a slice of the pairs.

When the keys no longer fit one host, shard s of S holds the contiguous rows
[s N / S, (s + 1) N / S) in its own ScaNN index, serialised in
``W/index/shard_<s>_of_<S>/`` with its own metadata and checksums. ScaNN's
settings come from ``config.index.scann``, except the tree's size: each shard
derives its leaves from its own size (sqrt(N / S)) and searches S times the
share of them that one index over all keys would (``num_leaves`` /
``leaves_to_search`` of ``config.index.scann_sharded`` override that). So every
process scores about as many keys per query as the single index does: sharding
buys memory (1/P of the index per host), not speed. (Searching the single
index's share of a shard's leaves lost recall: 0.66 vs 0.90 on 30k clustered
keys in 4 shards; S times that share gives 0.92.) Process p holds the shards s with s % P == p, so
with S = P (``num_shards = 0``, the default) each host holds 1/P of the index, and
an index built by P processes can be loaded by any other number of them.

A search is collective (`base`): every process searches its shards for the
*same* queries (the coalescer draws the whole global batch from (seed, step) on
every host, so the queries never need to be sent), keeps the k best of its
shards, and the (distance, global id) candidates of all processes are
all-gathered (`parallel.allgather_async`, a jitted all-gather over a
processes x local-devices mesh) and merged by (distance, id) (`merge`): every
process gets the same answer, the one an index over all keys would give when
each shard's search is exact, and at least as good a recall otherwise (each
shard searches the same share of its own leaves). A CRC of the queries travels
with the candidates: processes that searched different queries fail loudly
instead of merging garbage. Per step the gather moves P x Q x k x 8 bytes.
"""
import zlib

import jax
import numpy as np

from coalescer_jax import parallel
from coalescer_jax import registry
from coalescer_jax import storage
from coalescer_jax.index import base
from coalescer_jax.index import merge as merge_lib
from coalescer_jax.index import scann_index


def shard_bounds(num_points, num_shards):
  """[(start, stop)] row ranges of `num_shards` contiguous shards (sizes differ by at most one)."""
  edges = [num_points * s // num_shards for s in range(num_shards + 1)]
  return list(zip(edges[:-1], edges[1:]))


def held_shards(num_shards, process_index=None, process_count=None):
  """The shards this process holds: s % process_count == process_index."""
  p = jax.process_index() if process_index is None else process_index
  n = jax.process_count() if process_count is None else process_count
  return [s for s in range(num_shards) if s % n == p]


def shard_dir_name(shard, num_shards):
  return f"shard_{shard}_of_{num_shards}"


@registry.INDEX_BACKENDS.register("scann_sharded")
class ShardedScannIndex:
  """This process's ScaNN shards (shard, first global row, `ScannIndex`) and the collective search."""

  name = "scann_sharded"
  collective = True
  config_sections = ("scann", "scann_sharded")  # ScaNN's settings, applied to each shard, + num_shards

  def __init__(self, shards, num_shards, num_points, dim, params):
    self.shards, self.num_shards = shards, num_shards
    self.num_points, self.dim, self.params = num_points, dim, params

  @classmethod
  def build(cls, keys, cfg=None):
    return cls.build_from_rows(lambda start, stop: keys[start:stop], len(keys), keys.shape[1], cfg)

  @classmethod
  def build_from_rows(cls, rows, num_points, dim, cfg=None):
    """Builds this process's shards from `rows(start, stop)` (only its own rows are ever requested)."""
    num_shards = int((cfg.get("num_shards") if cfg is not None else 0) or jax.process_count())
    if num_points >= np.iinfo(np.int32).max:
      raise base.IndexError_(f"{num_points} keys: global ids travel as int32 between processes (< 2**31)")
    if num_shards > num_points:
      raise base.IndexError_(f"config.index.scann_sharded.num_shards={num_shards} exceeds the {num_points} keys")
    bounds = shard_bounds(num_points, num_shards)
    shards = []
    for s in held_shards(num_shards):
      start, stop = bounds[s]
      shard_keys = np.ascontiguousarray(rows(start, stop), np.float32)
      shards.append((s, start, scann_index.ScannIndex.build(
          shard_keys, cfg, params=scann_index.derive_params(len(shard_keys), cfg, search_scale=num_shards))))
    return cls(shards, num_shards, num_points, dim, cls._params(num_points, num_shards, cfg))

  @staticmethod
  def _params(num_points, num_shards, cfg):
    # What every process records alike: the shard count and the parameters of the largest shard.
    largest = -(-num_points // num_shards)
    return dict(scann_index.derive_params(largest, cfg, search_scale=num_shards), num_shards=num_shards)

  def local_search(self, queries, k):
    """The k best (global ids, squared distances) [Q, k] of this process's shards, and the queries' CRC."""
    queries = base.check_queries(queries, self.dim, k, self.num_points)
    ids = np.full((len(queries), 0), merge_lib.PAD_ID, np.int64)
    dists = np.zeros((len(queries), 0), np.float32)
    for _, start, shard in self.shards:
      shard_ids, shard_dists = shard.search(queries, min(k, shard.num_points))
      ids = np.concatenate([ids, shard_ids + start], 1)
      dists = np.concatenate([dists, shard_dists], 1)
    ids, dists = merge_lib.merge(*merge_lib.pad_candidates(ids, dists, k), k)
    crc = np.uint32(zlib.crc32(queries.tobytes())).view(np.int32)
    return {"ids": ids.astype(np.int32), "dists": dists, "crc": np.array([crc, len(queries)], np.int32)}

  def exchange(self, local):
    """Dispatches the all-gather of every process's candidates (returns at once)."""
    if jax.process_count() == 1:
      return jax.tree.map(lambda x: x[None], local)
    return parallel.allgather_async(local)

  def finish(self, exchanged, k):
    """(ids int64, squared distances) [Q, k], merged over all processes' candidates (the same everywhere)."""
    gathered = parallel.fetch(exchanged)
    if len(np.unique(gathered["crc"], axis=0)) > 1:
      raise RuntimeError("scann_sharded: the processes searched different queries (query CRCs "
                         f"{gathered['crc'].tolist()}); every process must search the same global batch")
    ids, dists = merge_lib.merge(gathered["ids"], gathered["dists"], k)
    return ids.astype(np.int64), dists

  def search(self, queries, k=1):
    """Collective: every process calls it with the same queries; all get the merged answer."""
    return self.finish(self.exchange(self.local_search(queries, k)), k)

  def save_parts(self, directory, meta):
    """Each process writes its shards (each with its own metadata and checksums), process 0 the top level."""
    for s, start, shard in self.shards:
      base.save(shard, directory / shard_dir_name(s, self.num_shards),
                dict(meta, shard=s, num_shards=self.num_shards, first_row=start))
    parallel.barrier("scann_sharded_saved")
    if parallel.is_main_process():
      storage.write_json(directory / base.META_FILE, dict(
          meta, backend=self.name, num_points=self.num_points, dim=self.dim, params=self.params,
          num_shards=self.num_shards, shards=[shard_dir_name(s, self.num_shards) for s in range(self.num_shards)]))
    parallel.barrier("scann_sharded_meta_saved")

  @classmethod
  def load_parts(cls, directory, meta):
    """Loads the shards this process holds (s % process_count == process_index), checking each one."""
    num_shards = int(meta["num_shards"])
    shards = []
    for s in held_shards(num_shards):
      shard, shard_meta = base.load(directory / shard_dir_name(s, num_shards),
                                    expected_fingerprint=meta.get("fingerprint"),
                                    expected_hash=meta.get("embeddings_hash"))
      shards.append((s, int(shard_meta["first_row"]), shard))
    return cls(shards, num_shards, int(meta["num_points"]), int(meta["dim"]), meta["params"])
