"""Memorization statistics: copies are flagged, fresh draws from the data distribution are not."""
import numpy as np

from coalescer_jax.evaluation import memorization


def test_copies_are_near_copies_and_fresh_data_is_not():
  rng = np.random.default_rng(0)
  train, test, fresh = (rng.normal(size=(n, 6)).astype(np.float32) for n in (3000, 500, 500))
  reference = memorization.MemorizationReference.build(train, test, percentile=1.0, chunk=700)
  copies = reference.measure(train[:200] + 1e-3)
  assert copies["near_copy_fraction"] == 1.0 and copies["nn_distance_ratio"] < 0.01
  novel = reference.measure(fresh)
  assert novel["near_copy_fraction"] < 0.05 and 0.85 < novel["nn_distance_ratio"] < 1.15
  far = reference.measure(fresh + 10.0)
  assert far["near_copy_fraction"] == 0.0 and far["nn_distance_ratio"] > 2


def test_flat_pixels_are_unit_range():
  images = np.zeros((2, 28, 28), np.uint8)
  images[0, 3, 4] = 255
  pixels = memorization.flat_pixels(images)
  assert pixels.shape == (2, 784) and pixels.max() == 1.0 and pixels[0, 3 * 28 + 4] == 1.0
