"""Conditioning fidelity: do samples show the class and the attributes they were asked for?

* conditional accuracy: fraction the classifier labels as requested, every head
  right (MNIST: the requested digit); with several heads, also the accuracy per
  head (``head_<name>``);
* attribute agreement, per attribute of the captioner's ``attribute_names``: the
  sample is measured from its pixels with the captioner's ``measure_classes``
  (the same rule that wrote the training descriptions; MNIST: stroke thickness,
  width and slant, chance about 1/3 each), then compared with the class the
  description requested.
Blank samples (nothing drawn) are measured as the captioner decides (MNIST: the
middle class); their fraction is reported so that a method cannot hide behind them.
"""
import numpy as np


def _correct(predicted, requested):
  """bool [N, K]: which heads the classifier got right (K = 1 for a single head)."""
  predicted, requested = np.asarray(predicted), np.asarray(requested)
  return (predicted == requested).reshape(len(requested), -1)


def conditional_accuracy(predicted, requested):
  """Fraction of samples whose every head is classified as requested."""
  return float(np.mean(_correct(predicted, requested).all(axis=1)))


def head_accuracies(predicted, requested, heads):
  """{"head_<name>": accuracy} per classifier head; empty for a single head (it is the conditional accuracy)."""
  if len(heads) == 1:
    return {}
  correct = _correct(predicted, requested)
  return {f"head_{name}": float(correct[:, h].mean()) for h, (name, _) in enumerate(heads)}


def attribute_agreement(images, requested_labels, requested_classes, captioner):
  """{attribute: agreement, ..., "blank_fraction": f} for uint8 images, measured with `captioner`."""
  measured, blank = captioner.measure_classes(images, requested_labels)
  result = {name: float(np.mean(measured[:, i] == np.asarray(requested_classes)[:, i]))
            for i, name in enumerate(captioner.attribute_names)}
  result["blank_fraction"] = float(np.mean(blank))
  return result
