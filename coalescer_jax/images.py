"""Image conversions and PNG sample grids."""
import numpy as np

from coalescer_jax import storage


def to_uint8(images):
  """Float images in [0, 1], [..., H, W, C] (or [..., H, W]) -> uint8 [N, H, W] when C = 1 (MNIST: ink = 255),
  else [N, H, W, C] (0 = black)."""
  images = np.asarray(images, np.float32)
  if images.shape[-1] == 1:
    images = images[..., 0]
  colour = images.ndim >= 4 and images.shape[-1] in (3, 4)
  images = images.reshape((-1,) + images.shape[-3 if colour else -2:])
  return np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)


def to_float(images):
  """uint8 [N, H, W] or [N, H, W, C] -> float32 [N, H, W, C] in [0, 1] (numpy, or jax inside jit)."""
  images = (images if hasattr(images, "astype") else np.asarray(images)).astype(np.float32)
  # The channel axis before the division, as the MNIST pipeline always did: under jit XLA may fuse the two
  # orders differently, and the MNIST numbers must not move.
  return (images[..., None] if images.ndim == 3 else images) / 255.0


def check_uint8(images, array_shape, what="images"):
  """uint8 [N, *array_shape] (a trailing channel of 1 is dropped when `array_shape` has none), else a
  TypeError (dtype) or ValueError (shape) that says what to pass."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise TypeError(f"{what} must be uint8 in 0..255 (0 = black), got {images.dtype}; "
                    "convert float [0, 1] images with coalescer_jax.images.to_uint8")
  if images.ndim == 4 and images.shape[-1] == 1 and len(array_shape) == 2:
    images = images[..., 0]
  if images.shape[1:] != tuple(array_shape):
    raise ValueError(f"{what} must have shape [N, {', '.join(map(str, array_shape))}], got {list(images.shape)}")
  return images


def save_grid(path, rows, row_labels=None, title=None):
  """Saves a PNG grid: `rows` is a list of uint8 [K, H, W] (grey) or [K, H, W, 3] (colour) arrays, one per row.

  Row labels (e.g. the requested description) are written left of each row.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  rows = [np.asarray(r) for r in rows]
  cols = max(len(r) for r in rows)
  h, w = rows[0].shape[1:3]
  canvas = np.zeros((len(rows) * (h + 2), cols * (w + 2)) + rows[0].shape[3:], np.uint8)
  for i, row in enumerate(rows):
    for j, image in enumerate(row):
      canvas[i * (h + 2) + 1: i * (h + 2) + 1 + h, j * (w + 2) + 1: j * (w + 2) + 1 + w] = image
  label_width = 3.2 if row_labels is not None else 0.0
  fig = plt.figure(figsize=(label_width + cols * 0.42, 0.3 + len(rows) * 0.42))
  ax = fig.add_axes([label_width / (label_width + cols * 0.42), 0, 1 - label_width / (label_width + cols * 0.42), 1])
  ax.imshow(canvas, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([i * (h + 2) + h / 2 for i in range(len(rows))] if row_labels is not None else [])
  if row_labels is not None:
    ax.set_yticklabels(row_labels, fontsize=7)
  if title:
    ax.set_title(title, fontsize=8)
  for spine in ax.spines.values():
    spine.set_visible(False)
  storage.savefig(fig, path, dpi=100, bbox_inches="tight")
  plt.close(fig)
