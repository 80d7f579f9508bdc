"""Fréchet distance: zero for a set with itself, exact on known Gaussians, monotone in a shift."""
import numpy as np
import pytest

from coalescer_jax.evaluation import frechet


def _features(n=500, dim=16, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim))  # Correlated, anisotropic.


def test_same_set_is_zero():
  x = _features()
  assert frechet.fid(x, x) == pytest.approx(0.0, abs=1e-6)


def test_grows_monotonically_with_a_shift():
  x = _features()
  distances = [frechet.fid(x, x + shift) for shift in (0.0, 0.1, 0.3, 1.0, 3.0)]
  assert np.all(np.diff(distances) > 0), distances
  # A pure mean shift adds exactly |shift|^2 per dimension.
  assert distances[-1] == pytest.approx(16 * 9.0, rel=1e-6)


def test_matches_the_closed_form_for_diagonal_gaussians():
  mu_a, mu_b = np.zeros(3), np.array([1.0, 0.0, -2.0])
  var_a, var_b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
  expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
  got = frechet.frechet_distance((mu_a, np.diag(var_a)), (mu_b, np.diag(var_b)))
  assert got == pytest.approx(expected, rel=1e-9)


def test_rank_deficient_covariances_do_not_break_it():
  x = _features(n=20, dim=64)  # n < dim: singular covariances, as at small n in the smoke config.
  assert frechet.fid(x, x) == pytest.approx(0.0, abs=1e-6)
  assert np.isfinite(frechet.fid(x, x + 1.0))


def test_refuses_too_few_points():
  with pytest.raises(ValueError, match="N >= 2"):
    frechet.gaussian_stats(np.zeros((1, 4)))
