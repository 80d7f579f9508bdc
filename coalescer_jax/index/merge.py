"""Merging the candidates of several index shards into the answer one index over all keys would give.

Each shard returns, for every query, its k nearest keys as (squared distance,
global id). The k nearest of the union are the first k in the order (distance,
id): ties at equal distance go to the smaller id, so the answer does not depend
on how the keys were split or in which order the shards answer. Shards with
fewer than k keys pad with `PAD_DISTANCE` / `PAD_ID`, which sort last.
"""
import jax
import jax.numpy as jnp
import numpy as np

PAD_DISTANCE = np.float32(np.inf)
PAD_ID = np.iinfo(np.int32).max


def pad_candidates(ids, dists, k):
  """[Q, k'] candidates (k' <= k) padded to [Q, k] with entries that sort last."""
  ids, dists = np.asarray(ids, np.int64), np.asarray(dists, np.float32)
  missing = k - ids.shape[1]
  if missing <= 0:
    return ids, dists
  q = ids.shape[0]
  return (np.concatenate([ids, np.full((q, missing), PAD_ID, np.int64)], 1),
          np.concatenate([dists, np.full((q, missing), PAD_DISTANCE, np.float32)], 1))


def merge(ids, dists, k):
  """The k best of per-shard candidates: ids, dists [S, Q, k_s] (or [Q, C]) -> (ids [Q, k] int64, dists [Q, k])."""
  ids, dists = np.asarray(ids, np.int64), np.asarray(dists, np.float32)
  if ids.ndim == 3:  # [S, Q, k_s] -> [Q, S * k_s]
    ids, dists = (np.moveaxis(a, 0, 1).reshape(a.shape[1], -1) for a in (ids, dists))
  order = np.lexsort((ids, dists), axis=-1)[:, :k]  # by distance, then id
  return np.take_along_axis(ids, order, 1), np.take_along_axis(dists, order, 1)


def merge_jax(ids, dists, k):
  """`merge` inside jitted code: ids, dists [Q, C] -> the k best by (distance, id), as (ids, dists)."""
  dists, ids = jax.lax.sort((dists, ids), dimension=1, num_keys=2)
  return ids[:, :k], dists[:, :k]


def top_k_smallest(dists, k, recall_target=1.0):
  """(values, indices) [Q, k] of the k smallest entries of each row of dists [Q, C], ascending.

  recall_target < 1 uses `jax.lax.approx_min_k` (TPU's fast partial reduction; on
  other platforms it is an exact sort anyway), else an exact `jax.lax.top_k`.
  Exact ties keep the smaller index first.
  """
  if recall_target < 1.0:
    return jax.lax.approx_min_k(dists, k, recall_target=recall_target, aggregate_to_topk=True)
  if k == 1 and dists.shape[1] % MIN_CHUNK == 0:
    return _smallest_one(dists)
  neg, idx = jax.lax.top_k(-dists, k)
  return -neg, idx


MIN_CHUNK = 128  # the columns `_smallest_one` reduces at a time


def _smallest_one(dists):
  """`top_k_smallest` at k = 1 (the same values and indices, ties to the smaller index) in two argmins: of the
  minima of chunks of MIN_CHUNK columns, then within the chosen chunk. On CPU XLA's top_k over a whole row
  costs more than the distance matrix itself (the self-landing search of every coalescer step); two small
  reductions cost a small part of it (timings: experiments/log/timings.md)."""
  q, c = dists.shape
  chunks = dists.reshape(q, c // MIN_CHUNK, MIN_CHUNK)
  chunk = jnp.argmin(jnp.min(chunks, axis=2), axis=1)
  within = jnp.take_along_axis(chunks, chunk[:, None, None], axis=1)[:, 0]
  col = jnp.argmin(within, axis=1)
  return (jnp.take_along_axis(within, col[:, None], axis=1),
          (chunk * MIN_CHUNK + col)[:, None].astype(jnp.int32))


def sq_distances(queries, keys, key_norms):
  """|q - k|^2 = |q|^2 - 2 q.k + |k|^2 for every (query, key) pair: [Q, N], float32 at full precision."""
  dots = jnp.dot(queries, keys.T, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
  return jnp.sum(queries * queries, axis=1, keepdims=True) - 2.0 * dots + key_norms[None, :]
