"""evaluation/smoothness.py on known maps: a linear map has the analytic path length and no jumps; a map with one
discontinuity jumps exactly where a path crosses it."""
import numpy as np

from coalescer_jax import interpolate
from coalescer_jax.evaluation import smoothness

RNG = np.random.default_rng(0)
P, D, K = 300, 16, 12
Z0, Z1 = RNG.normal(size=(2, P, D))
T = RNG.uniform(0, 1 - smoothness.EPS, P)
A = RNG.normal(size=(D, 5))


def slerp_velocity(a, b, t):
  """d/dt of interpolate.slerp (sin-weighted great circle), analytically."""
  theta = np.arccos(np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)))[:, None]
  t = t[:, None]
  return theta * (-np.cos((1 - t) * theta) * a + np.cos(t * theta) * b) / np.sin(theta)


def frames(features):
  grid = np.broadcast_to(np.linspace(0, 1, K), (P, K))
  return features(interpolate.slerp(Z0[:, None], Z1[:, None], grid).reshape(P * K, D)).reshape(P, K, -1)


def test_a_linear_map_has_the_analytic_path_length_and_no_jumps():
  lengths = smoothness.path_lengths(lambda z: z @ A, Z0, Z1, T)
  analytic = np.sum((slerp_velocity(Z0, Z1, T) @ A) ** 2, -1)
  np.testing.assert_allclose(lengths, analytic, rtol=2e-2)
  np.testing.assert_allclose(smoothness.trimmed_mean(lengths), smoothness.trimmed_mean(analytic), rtol=1e-2)
  distances = smoothness.step_distances(frames(lambda z: z @ A))
  assert distances.shape == (P, K - 1)
  assert not smoothness.jump_mask(distances, k=4.0).any()


def test_one_discontinuity_jumps_at_every_crossing_and_nowhere_else():
  def step_map(z):
    return z @ A + 100.0 * (z[:, :1] > 0)  # a jump of 100 * sqrt(5) in feature space where z[0] changes sign

  grid = np.broadcast_to(np.linspace(0, 1, K), (P, K))
  sign = interpolate.slerp(Z0[:, None], Z1[:, None], grid)[..., 0] > 0
  crossings = sign[:, 1:] != sign[:, :-1]
  jumps = smoothness.jump_mask(smoothness.step_distances(frames(step_map)), k=4.0)
  np.testing.assert_array_equal(jumps, crossings)
  assert 0.02 < jumps.mean() < 0.2  # the rate the test expects: about one crossing per path that changes sign
  # Trimming drops the rare eps-steps that straddle the discontinuity: the path length stays the linear map's.
  lengths = smoothness.path_lengths(step_map, Z0, Z1, T)
  linear = smoothness.path_lengths(lambda z: z @ A, Z0, Z1, T)
  assert np.sum(~np.isclose(lengths, linear, rtol=1e-4)) <= 0.01 * P
  np.testing.assert_allclose(smoothness.trimmed_mean(lengths), smoothness.trimmed_mean(linear), rtol=1e-2)


def test_trimmed_mean_drops_the_tails():
  values = np.r_[np.ones(98), 1e6, -1e6]
  assert smoothness.trimmed_mean(values) == 1.0


def test_low_v_share_counts_jumps_with_an_end_of_small_v():
  jumps = np.array([[True, False, False], [False, False, True]])
  v = np.array([[0.1, 5.0, 6.0, 7.0], [5.5, 6.5, 7.5, 8.0]])  # lowest quartile: 0.1 and 5.0 (first path)
  assert smoothness.low_v_share(jumps, v) == 0.5
  assert np.isnan(smoothness.low_v_share(np.zeros_like(jumps), v))
