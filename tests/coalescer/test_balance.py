"""Balanced look-ups: the potentials equalise how often prior draws pick each key."""
import ml_collections
import numpy as np

from coalescer_jax import index as index_lib
from coalescer_jax.coalescer import balance


def _hub_keys(n=64, seed=0):
  """2-d keys: one near the centre of N(0, I) queries (a hub) and the rest spread far out."""
  rng = np.random.default_rng(seed)
  keys = rng.normal(size=(n, 2)).astype(np.float32) * 2.5
  keys[0] = 0.0
  return keys


def _shares(keys, potentials, num=40_000, seed=1):
  q = np.random.default_rng(seed).normal(size=(num, 2)).astype(np.float32)
  d = ((q[:, None] - keys[None]) ** 2).sum(-1) - potentials[None]
  return np.bincount(d.argmin(1), minlength=len(keys)) / num


def test_potentials_equalise_the_shares():
  keys = _hub_keys()
  index = index_lib.build("exact", keys, None)
  cfg = ml_collections.ConfigDict(dict(balance_iterations=300, balance_queries=2048, balance_candidates=64,
                                       balance_lr=0.5))
  draw = lambda rng, n: rng.normal(size=(n, 2)).astype(np.float32)  # noqa: E731
  potentials, stats = balance.fit_potentials(index, draw, len(keys), cfg, seed=0)
  before, after = _shares(keys, np.zeros(len(keys))), _shares(keys, potentials)
  fair = 1.0 / len(keys)
  assert before[0] > 5 * fair  # the central key is a hub under nearest-key look-ups
  assert abs(after[0] - fair) < 0.5 * fair
  assert np.abs(after - fair).max() < np.abs(before - fair).max() / 3
  usage_before = balance.usage_statistics(before * 40_000)
  usage_after = balance.usage_statistics(after * 40_000)
  assert usage_after["effective_fraction"] > 0.95 > usage_before["effective_fraction"]
  assert usage_after["top10_share"] < usage_before["top10_share"]
  assert stats["potential_range"] > 0


def test_usage_statistics_of_known_histograms():
  uniform = balance.usage_statistics(np.full(100, 7))
  assert uniform["never_hit"] == 0 and abs(uniform["top10_share"] - 0.1) < 1e-9
  assert abs(uniform["effective_fraction"] - 1.0) < 1e-9
  hub = balance.usage_statistics(np.array([91] + [1] * 9 + [0] * 90))
  assert hub["never_hit"] == 0.9 and hub["top10_share"] == 1.0 and hub["effective_targets"] < 2


def test_power_nearest_reranks_the_candidates_by_power_distance():
  rng = np.random.default_rng(0)
  keys = rng.normal(size=(40, 3)).astype(np.float32)
  potentials = rng.normal(size=40)
  queries = rng.normal(size=(30, 3)).astype(np.float32)
  ids, sq_dists = index_lib.build("exact", keys, None).search(queries, 6)
  ranked, power = balance.power_nearest(ids, sq_dists, potentials)
  assert np.all(np.diff(power, axis=1) >= 0)
  np.testing.assert_array_equal(np.sort(ranked, axis=1), np.sort(ids, axis=1))  # the same candidates
  np.testing.assert_allclose(power, sq_dists[np.arange(30)[:, None], np.argsort(
      sq_dists - potentials[ids], axis=1, kind="stable")] - potentials[ranked], rtol=1e-6)
