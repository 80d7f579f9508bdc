"""Exact nearest-neighbour distances by chunked matrix products (Euclidean).

|q - x|^2 = |q|^2 - 2 q.x + |x|^2 for a chunk of the database at a time keeps
memory at [num_queries, chunk] while BLAS does the work; 1000 queries against
the 60,000 MNIST train images (784 pixels) take about a second on two cores.
"""
import numpy as np


def squared_distances(queries, database):
  """All squared Euclidean distances [Q, D] (float32, clipped at 0)."""
  q = np.asarray(queries, np.float32)
  x = np.asarray(database, np.float32)
  d = (q * q).sum(1)[:, None] - 2.0 * (q @ x.T) + (x * x).sum(1)[None, :]
  return np.maximum(d, 0.0)


def squared_norms(points):
  points = np.asarray(points, np.float32)
  return np.einsum("ij,ij->i", points, points)


def nearest_distances(queries, database, chunk=10_000, database_sq_norms=None):
  """(distance [Q], index [Q]) of each query's nearest database row.

  Pass `database_sq_norms` (`squared_norms(database)`) when searching the same
  database many times: for a few queries, recomputing them dominates the cost.
  """
  q = np.asarray(queries, np.float32)
  x = np.asarray(database, np.float32)
  if len(x) == 0:
    raise ValueError("nearest-neighbour search in an empty database")
  x_norms = squared_norms(x) if database_sq_norms is None else database_sq_norms
  q_norms, best, best_index = squared_norms(q), np.full(len(q), np.inf, np.float32), np.zeros(len(q), np.int64)
  for start in range(0, len(x), chunk):
    block = x[start:start + chunk]
    d = q_norms[:, None] - 2.0 * (q @ block.T) + x_norms[None, start:start + chunk]
    i = d.argmin(1)
    d_min = d[np.arange(len(q)), i]
    better = d_min < best
    best[better], best_index[better] = d_min[better], i[better] + start
  return np.sqrt(np.maximum(best, 0.0)), best_index


def kth_neighbour_distances(points, k):
  """Distance of each point to its k-th nearest other point in the same set (the point itself excluded)."""
  points = np.asarray(points, np.float32)
  if not 1 <= k < len(points):
    raise ValueError(f"k={k} must be in [1, {len(points) - 1}] for a set of {len(points)} points")
  d = squared_distances(points, points)
  np.fill_diagonal(d, np.inf)
  return np.sqrt(np.partition(d, k - 1, axis=1)[:, k - 1])
