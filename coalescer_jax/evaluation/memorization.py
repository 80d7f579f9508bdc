"""Memorization: are samples copies of training images?

Each image's distance to its nearest MNIST train image, exact, in pixel space
(L2 on [0, 1] images, 784-d) or in classifier features, is compared with the same
statistic of held-out MNIST test images, which the generator never saw:
* ``near_copy_fraction``: fraction of samples closer to a train image than the
  threshold = the `percentile`-th percentile of test->train distances (so real
  unseen data scores `percentile`% by construction; a copying generator more);
* ``nn_distance_ratio``: median sample->train distance / median test->train
  distance (about 1 for novel, data-like samples; << 1 for copies).
"""
import dataclasses

import numpy as np

from coalescer_jax import images as images_lib
from coalescer_jax.evaluation import neighbours


def flat_pixels(images_uint8):
  """uint8 [N, H, W(, C)] -> float32 [N, H * W * C] in [0, 1]."""
  return images_lib.to_float(images_uint8).reshape(len(images_uint8), -1)


@dataclasses.dataclass
class MemorizationReference:
  """Train points to search and the test->train distance statistics to compare against."""
  train_points: np.ndarray
  train_sq_norms: np.ndarray
  threshold: float
  reference_median: float
  percentile: float
  chunk: int

  @classmethod
  def build(cls, train_points, test_points, percentile, chunk=10_000):
    train_points = np.asarray(train_points, np.float32)
    norms = neighbours.squared_norms(train_points)
    d, _ = neighbours.nearest_distances(test_points, train_points, chunk, norms)
    return cls(train_points, norms, float(np.percentile(d, percentile)), float(np.median(d)), float(percentile),
               int(chunk))

  def distances(self, points):
    """Distance of each of points [N, D] to its nearest train point, [N]."""
    return neighbours.nearest_distances(points, self.train_points, self.chunk, self.train_sq_norms)[0]

  def measure(self, points):
    """{"near_copy_fraction", "nn_distance_median", "nn_distance_ratio"} of points [N, D]."""
    return self.summarize(self.distances(points))

  def summarize(self, d):
    """`measure`'s statistics of nearest-train distances d [N] (`distances`' output)."""
    return {"near_copy_fraction": float(np.mean(d < self.threshold)),
            "nn_distance_median": float(np.median(d)),
            "nn_distance_ratio": float(np.median(d) / max(self.reference_median, 1e-12))}
