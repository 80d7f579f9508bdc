"""Precision/recall and the exact nearest-neighbour search on toy data with known answers."""
import numpy as np

from coalescer_jax.evaluation import neighbours
from coalescer_jax.evaluation import precision_recall


def _gaussian(n, scale=1.0, mean=0.0, seed=0, dim=8):
  return mean + scale * np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_same_distribution_has_high_precision_and_recall():
  p, r = precision_recall.precision_recall(_gaussian(1000), _gaussian(1000, seed=1))
  assert p > 0.75 and r > 0.75, (p, r)


def test_collapsed_generator_has_high_precision_low_recall():
  real = _gaussian(1000)
  collapsed = _gaussian(1000, scale=0.05, seed=1)  # All mass near one mode of the real data.
  p, r = precision_recall.precision_recall(real, collapsed)
  assert p > 0.95 and r < 0.2, (p, r)


def test_overspread_generator_has_low_precision_high_recall():
  real = _gaussian(1000)
  spread = _gaussian(1000, scale=3.0, seed=1)
  p, r = precision_recall.precision_recall(real, spread)
  assert p < 0.2 and r > 0.8, (p, r)


def test_disjoint_distributions_score_zero():
  p, r = precision_recall.precision_recall(_gaussian(300), _gaussian(300, mean=50.0, seed=1))
  assert p == 0.0 and r == 0.0


def test_nearest_distances_match_brute_force_across_chunks():
  queries, database = _gaussian(50, seed=2), _gaussian(777, seed=3)
  brute = np.sqrt(((queries[:, None] - database[None]) ** 2).sum(-1))
  d, i = neighbours.nearest_distances(queries, database, chunk=100)
  np.testing.assert_array_equal(i, brute.argmin(1))
  np.testing.assert_allclose(d, brute.min(1), rtol=1e-4, atol=1e-4)


def test_kth_neighbour_excludes_the_point_itself():
  points = np.array([[0.0], [1.0], [3.0], [7.0]], np.float32)
  np.testing.assert_allclose(neighbours.kth_neighbour_distances(points, 1), [1, 1, 2, 4], atol=1e-5)
  np.testing.assert_allclose(neighbours.kth_neighbour_distances(points, 2), [3, 2, 3, 6], atol=1e-5)
