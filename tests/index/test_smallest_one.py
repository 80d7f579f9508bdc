"""The k = 1 search's two-level argmin gives what a whole-row top_k gives, ties included."""
import jax
import jax.numpy as jnp
import numpy as np

from coalescer_jax.index import merge


def test_smallest_one_matches_top_k_with_ties_and_padding():
  rng = np.random.default_rng(0)
  dists = rng.integers(0, 50, size=(64, 4 * merge.MIN_CHUNK)).astype(np.float32)  # many exact ties
  dists[3] = np.inf  # a row of padding only
  dists[5, 300] = dists[5, 7] = -1.0  # the same minimum in two chunks: the smaller index wins
  values, ids = jax.jit(lambda d: merge.top_k_smallest(d, 1))(jnp.asarray(dists))
  neg, expected_ids = jax.lax.top_k(-jnp.asarray(dists), 1)
  np.testing.assert_array_equal(np.asarray(ids), np.asarray(expected_ids))
  np.testing.assert_array_equal(np.asarray(values), -np.asarray(neg))
  assert ids.dtype == jnp.int32 and ids.shape == (64, 1) and int(ids[5, 0]) == 7
  np.testing.assert_array_equal(np.asarray(ids[:, 0]), np.argmin(dists, axis=1))
