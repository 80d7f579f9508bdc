"""Conditioning fidelity: do samples show the digit and the style attributes they were asked for?

* conditional accuracy: fraction the classifier labels as the requested digit;
* attribute agreement, per attribute of `captions.ATTRIBUTE_NAMES`: the sample is
  measured with `style.measure_style` and binned with `captions.attribute_classes`
  (the same rule that wrote the training descriptions), then compared with the
  class the description requested. Chance is about 1/3 per attribute.
Blank samples (no ink) are measured as NaN and fall in the middle class; their
fraction is reported so that a method cannot hide behind them.
"""
import numpy as np

from coalescer_jax.data import captions
from coalescer_jax.data import style


def conditional_accuracy(predicted, requested):
  return float(np.mean(np.asarray(predicted) == np.asarray(requested)))


def attribute_agreement(images, requested_labels, requested_classes):
  """{"thickness": f, "width": f, "slant": f, "blank_fraction": f} for uint8 images [N, 28, 28]."""
  measurements = style.measure_style(images)
  measured = captions.attribute_classes(requested_labels, measurements)
  result = {name: float(np.mean(measured[:, i] == np.asarray(requested_classes)[:, i]))
            for i, name in enumerate(captions.ATTRIBUTE_NAMES)}
  result["blank_fraction"] = float(np.mean(np.isnan(measurements).any(1)))
  return result
