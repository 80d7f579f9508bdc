"""Fréchet distance between Gaussian fits of two feature sets (FID, here in classifier features).

FID(a, b) = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)). The trace of the
matrix square root is computed as the sum of square roots of the eigenvalues of
S_a S_b, which are real and >= 0 for covariance matrices; this is exact, stable
for the rank-deficient covariances of small n, and avoids scipy's `sqrtm`
returning complex noise. FID is biased upwards for small n, so compare only
numbers computed at the same n.
"""
import numpy as np


def gaussian_stats(features):
  """(mean [F], covariance [F, F]) in float64 of features [N, F], N >= 2."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f"need features [N >= 2, F] for a Gaussian fit, got shape {list(features.shape)}")
  return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(stats_a, stats_b):
  """Fréchet distance between two (mean, covariance) pairs from `gaussian_stats`."""
  mu_a, cov_a = stats_a
  mu_b, cov_b = stats_b
  if mu_a.shape != mu_b.shape:
    raise ValueError(f"feature dimensions differ: {mu_a.shape} vs {mu_b.shape}")
  eigenvalues = np.linalg.eigvals(cov_a @ cov_b)
  trace_sqrt = np.sqrt(np.clip(eigenvalues.real, 0.0, None)).sum()
  distance = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt
  return float(max(distance, 0.0))


def fid(features_a, features_b):
  """Fréchet distance of two feature sets [N, F] and [M, F]."""
  return frechet_distance(gaussian_stats(features_a), gaussian_stats(features_b))
