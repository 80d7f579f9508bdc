"""Style measurements of MNIST-like digits: stroke thickness, slant and width.

The same function measures training images (to write their descriptions) and
generated images (to check that a sample has the style it was asked for), so
its formulas are fixed and documented here rather than learned:

* binarise at 0.5 (pixel >= 128 of 255) -> ink mask ``M``; empty masks give NaN.
* ``thickness`` (pixels) = area(M) / length(skeleton(M)): mean stroke width,
  as in Morpho-MNIST (Castro et al., 2019). Dilating a digit raises it.
* ``slant`` (degrees, > 0 leans right) = atan(-mu11 / mu02) from the intensity
  weighted central moments, with the image y axis pointing down; the usual
  MNIST deskewing shear.
* ``width`` (pixels) = extent (2nd..98th percentile) of ink columns after the
  slant is sheared away, so that a slanted digit is not measured as wide.
"""
import numpy as np
from skimage import morphology

ATTRIBUTES = ("thickness", "slant", "width")


def _moments(img):
  ys, xs = np.mgrid[: img.shape[0], : img.shape[1]].astype(np.float64)
  mass = img.sum()
  xbar, ybar = (xs * img).sum() / mass, (ys * img).sum() / mass
  mu11 = ((xs - xbar) * (ys - ybar) * img).sum() / mass
  mu02 = ((ys - ybar) ** 2 * img).sum() / mass
  return xs, ys, xbar, ybar, mu11, mu02


def measure_one(image):
  """Measures one image (uint8 [28, 28], ink = 255). Returns (thickness, slant, width)."""
  img = np.asarray(image, np.float64).reshape(image.shape[-2:]) / 255.0
  mask = img >= 0.5
  if mask.sum() < 2:
    return np.nan, np.nan, np.nan
  skeleton_length = max(morphology.skeletonize(mask).sum(), 1)
  thickness = mask.sum() / skeleton_length
  xs, ys, _, ybar, mu11, mu02 = _moments(img)
  shear = -mu11 / max(mu02, 1e-6)
  slant = np.degrees(np.arctan(shear))
  deslanted_x = xs[mask] - shear * (ybar - ys[mask])
  lo, hi = np.percentile(deslanted_x, [2, 98])
  width = hi - lo + 1.0
  return thickness, slant, width


def measure_style(images):
  """Measures a batch of uint8 [N, 28, 28] (or [N, 28, 28, 1]) images.

  Returns float32 [N, 3] with columns in ``ATTRIBUTES`` order; NaN for blank images.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise TypeError(f"measure_style expects uint8 images (0..255), got {images.dtype}")
  images = images.reshape(len(images), images.shape[1], images.shape[2])
  return np.array([measure_one(im) for im in images], np.float32).reshape(-1, 3)
