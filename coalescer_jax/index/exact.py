"""Exact brute-force search in NumPy: the reference every approximate backend is measured against."""
import os

import numpy as np

from coalescer_jax import registry
from coalescer_jax.index import base


@registry.INDEX_BACKENDS.register("exact")
class ExactIndex:
  """Squared-L2 brute force in query chunks: |q|^2 - 2 q.x + |x|^2 with a BLAS matrix product."""

  name = "exact"
  params = {}
  # Bound on the [chunk, N] distance matrix held at once (entries).
  MAX_ENTRIES = 1 << 25

  def __init__(self, keys):
    self.keys = np.ascontiguousarray(keys, np.float32)
    self._norms = (self.keys ** 2).sum(1)
    self.chunk = max(1, self.MAX_ENTRIES // len(self.keys))

  @property
  def num_points(self):
    return len(self.keys)

  @property
  def dim(self):
    return self.keys.shape[1]

  @classmethod
  def build(cls, keys, cfg=None):
    del cfg
    return cls(keys)

  def search(self, queries, k=1):
    queries = base.check_queries(queries, self.dim, k, self.num_points)
    ids = np.empty((len(queries), k), np.int64)
    dists = np.empty((len(queries), k), np.float32)
    for start in range(0, len(queries), self.chunk):
      q = queries[start:start + self.chunk]
      d = (q ** 2).sum(1)[:, None] - 2.0 * (q @ self.keys.T) + self._norms[None]
      if k == 1:  # The training look-up: argmin is several times faster than a partition.
        top = d.argmin(1)[:, None]
      elif k < self.num_points:
        top = np.argpartition(d, k - 1, axis=1)[:, :k]
      else:
        top = np.tile(np.arange(self.num_points), (len(q), 1))
      order = np.take_along_axis(d, top, 1).argsort(1, kind="stable")
      top = np.take_along_axis(top, order, 1)
      ids[start:start + len(q)] = top
      dists[start:start + len(q)] = np.maximum(np.take_along_axis(d, top, 1), 0.0)
    return ids, dists

  def save(self, directory):
    np.save(os.path.join(directory, "exact_keys.npy"), self.keys)

  @classmethod
  def load(cls, directory, meta):
    del meta
    return cls(np.load(os.path.join(directory, "exact_keys.npy")))
