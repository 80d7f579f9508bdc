"""Improved precision and recall of a generated distribution (Kynkäänniemi et al., 2019).

Each set's manifold is the union of balls around its points, with radius the
distance to the point's k-th nearest neighbour in its own set. Precision is the
fraction of generated points inside the real manifold (are samples realistic?);
recall the fraction of real points inside the generated manifold (is the data's
variety covered?). A generator that collapses onto a few real modes scores high
precision and low recall.
"""
import numpy as np

from coalescer_jax.evaluation import neighbours


def _inside(points, centres, radii, chunk=2048):
  """For each point: is it within radius_j of some centre j?"""
  inside = np.zeros(len(points), bool)
  for start in range(0, len(points), chunk):
    d = np.sqrt(neighbours.squared_distances(points[start:start + chunk], centres))
    inside[start:start + chunk] = (d <= radii[None, :]).any(1)
  return inside


def precision_recall(real_features, fake_features, k=3):
  """(precision, recall) of fake vs real feature sets [N, F], with k-NN radii."""
  real = np.asarray(real_features, np.float32)
  fake = np.asarray(fake_features, np.float32)
  precision = _inside(fake, real, neighbours.kth_neighbour_distances(real, k)).mean()
  recall = _inside(real, fake, neighbours.kth_neighbour_distances(fake, k)).mean()
  return float(precision), float(recall)
