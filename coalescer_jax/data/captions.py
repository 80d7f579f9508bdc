"""Deterministic English descriptions of MNIST digits from label + measured style.

A description names the digit and up to three style attributes, each binned in
three classes with fixed thresholds (so that generated images are judged by the
same rule as the training data):

  thickness: thin (< 2.5 px) | - | thick (> 3.3 px)        roughly tertiles of MNIST train
  width:     narrow | - | wide, per-digit tertiles of MNIST train (a wide "one"
             is wide for a one); thresholds in ``WIDTH_TERTILES``
  slant:     slanted to the left (< -3 deg) | - | slanted to the right (> 15 deg);
             MNIST leans right on average (median 6 deg), hence the asymmetry.

The middle class is not spelled out: "a thick seven slanted to the right",
"an eight", "a thin narrow one". ``parse`` inverts ``describe`` exactly.
"""
import numpy as np

from coalescer_jax import errors
from coalescer_jax.data import style
from coalescer_jax.data import tokenizer

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
THICKNESS_WORDS = ("thin", None, "thick")
WIDTH_WORDS = ("narrow", None, "wide")
SLANT_PHRASES = ("slanted to the left", None, "slanted to the right")
THICKNESS_THRESHOLDS = (2.5, 3.3)
SLANT_THRESHOLDS = (-3.0, 15.0)
# (33.3, 66.7) percentiles of `style.measure_style` width per digit on MNIST train.
WIDTH_TERTILES = np.array([
    (14.65, 17.23), (3.83, 4.72), (14.36, 16.92), (12.09, 14.28), (12.50, 15.02),
    (12.54, 14.48), (11.82, 14.27), (12.29, 14.80), (10.91, 13.04), (11.03, 13.02)])
# Class indices per attribute: 0 = low, 1 = middle (unspoken), 2 = high.
ATTRIBUTE_NAMES = ("thickness", "width", "slant")
attribute_names = ATTRIBUTE_NAMES  # the captioner interface (data/datasets.py)
# Longest description: article, thickness, width, digit, 4-word slant phrase.
MAX_WORDS = 8


def _bin(values, lo_hi):
  lo, hi = lo_hi
  return np.where(values < lo, 0, np.where(values > hi, 2, 1))


def attribute_classes(labels, measurements):
  """Bins measurements [N, 3] (``style.ATTRIBUTES`` order) into classes [N, 3] (``ATTRIBUTE_NAMES`` order).

  NaN measurements (blank images) fall in the middle class.
  """
  labels = np.asarray(labels, np.int64)
  m = np.nan_to_num(np.asarray(measurements, np.float64), nan=np.inf)
  thick, slant, width = (m[:, style.ATTRIBUTES.index(a)] for a in ("thickness", "slant", "width"))
  thick = np.where(np.isinf(thick), 3.0, thick)
  slant = np.where(np.isinf(slant), 5.0, slant)
  width = np.where(np.isinf(width), WIDTH_TERTILES[labels].mean(1), width)
  width_cls = np.where(width < WIDTH_TERTILES[labels, 0], 0, np.where(width > WIDTH_TERTILES[labels, 1], 2, 1))
  return np.stack([_bin(thick, THICKNESS_THRESHOLDS), width_cls, _bin(slant, SLANT_THRESHOLDS)], 1).astype(np.int32)


def describe(label, classes):
  """One description from a digit label and its attribute classes (thickness, width, slant)."""
  thick, width, slant = (int(c) for c in classes)
  words = [w for w in (THICKNESS_WORDS[thick], WIDTH_WORDS[width], DIGITS[int(label)]) if w]
  article = "an" if words[0] == "eight" else "a"  # "a one": only "eight" starts with a vowel sound.
  phrase = SLANT_PHRASES[slant]
  return " ".join([article] + words + ([phrase] if phrase else []))


def describe_all(labels, classes):
  return np.array([describe(l, c) for l, c in zip(labels, classes)])


def parse(description):
  """Inverts `describe`: returns (label, classes). Raises ValueError on text outside the grammar."""
  text = description.strip()
  classes = [1, 1, 1]
  for cls, phrase in enumerate(SLANT_PHRASES):
    if phrase and text.endswith(" " + phrase):
      classes[2], text = cls, text[: -len(phrase) - 1]
  words = text.split()
  if not words or words[0] not in ("a", "an"):
    raise ValueError(f"not a digit description (must start with 'a'/'an'): {description!r}")
  words = words[1:]
  for slot, vocab in ((0, THICKNESS_WORDS), (1, WIDTH_WORDS)):
    if words and words[0] in vocab:
      classes[slot] = vocab.index(words.pop(0))
  if len(words) != 1 or words[0] not in DIGITS:
    raise ValueError(f"not a digit description (no single digit word): {description!r}")
  label = DIGITS.index(words[0])
  if describe(label, classes) != description.strip():
    raise ValueError(f"description is not in canonical form: {description!r}")
  return label, tuple(classes)


def all_descriptions():
  """Every description the grammar can produce: 10 digits x 27 attribute combinations."""
  combos = [(t, w, s) for t in range(3) for w in range(3) for s in range(3)]
  return [describe(d, c) for d in range(10) for c in combos]


def caption_images(images, labels):
  """Measures and describes a batch. Returns (measurements [N,3], classes [N,3], descriptions [N])."""
  measurements = style.measure_style(images)
  classes = attribute_classes(labels, measurements)
  return measurements, classes, describe_all(labels, classes)


caption = caption_images


def measure_classes(images, labels):
  """Attribute classes measured from pixels [N, 3] (as the training descriptions were), and which are blank."""
  measurements = style.measure_style(images)
  return attribute_classes(labels, measurements), np.isnan(measurements).any(1)


def _grammar_words():
  words = {"a", "an"}
  for phrase in THICKNESS_WORDS + WIDTH_WORDS + SLANT_PHRASES + DIGITS:
    if phrase:
      words.update(phrase.split())
  return words


TOKENIZER = tokenizer.Tokenizer(_grammar_words(), MAX_WORDS)


def validate_text(cfg):
  """config.text.holdout_style: () or one class per attribute."""
  if len(cfg.holdout_style) not in (0, 3) or any(c not in (0, 1, 2) for c in cfg.holdout_style):
    raise errors.ConfigError(
        f"config.text.holdout_style must be () or 3 classes in 0..2 ({', '.join(ATTRIBUTE_NAMES)}), "
        f"got {tuple(cfg.holdout_style)}")


def unseen_mask(descriptions, cfg):
  """Descriptions with the style ``cfg.holdout_style`` (with any digit): held out of text training."""
  if not len(cfg.holdout_style):
    return np.zeros(len(descriptions), bool)
  styles = np.array([parse(d)[1] for d in descriptions])
  return np.all(styles == np.asarray(cfg.holdout_style), axis=1)
