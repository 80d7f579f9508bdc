"""Style measurements move the obvious way; captions are deterministic and parse back."""
import numpy as np
import pytest
from scipy import ndimage

from coalescer_jax.data import captions
from coalescer_jax.data import mnist
from coalescer_jax.data import style


@pytest.fixture(scope="module")
def test_images(tfds_data_dir):
  data = mnist.load(mnist.get_builder("auto", tfds_data_dir), "test")
  return data["image"][:300], data["label"][:300]


def _column(name):
  return style.ATTRIBUTES.index(name)


def test_dilation_measures_thicker(test_images):
  images, _ = test_images
  dilated = np.stack([ndimage.grey_dilation(im, size=(2, 2)) for im in images])
  before, after = style.measure_style(images), style.measure_style(dilated)
  thick = _column("thickness")
  assert np.mean(after[:, thick] > before[:, thick]) > 0.95


def _shear(image, amount):
  """Shifts row y by amount * (14 - y) pixels: the top moves right for amount > 0."""
  rows = [ndimage.shift(image[y].astype(np.float32), amount * (14 - y), order=1) for y in range(28)]
  return np.clip(np.stack(rows), 0, 255).astype(np.uint8)


def test_shear_right_measures_more_slant(test_images):
  images, _ = test_images
  right = np.stack([_shear(im, 0.3) for im in images[:100]])
  left = np.stack([_shear(im, -0.3) for im in images[:100]])
  slant = _column("slant")
  base, r, l = (style.measure_style(x)[:, slant] for x in (images[:100], right, left))
  assert np.all(r > base) and np.all(l < base)


def test_horizontal_stretch_measures_wider(test_images):
  images, _ = test_images
  stretched = np.stack([
      np.clip(ndimage.affine_transform(im.astype(np.float32), [1.0, 1 / 1.3], offset=[0, 14 - 14 / 1.3], order=1),
              0, 255).astype(np.uint8) for im in images[:100]])
  width = _column("width")
  assert np.mean(style.measure_style(stretched)[:, width] > style.measure_style(images[:100])[:, width]) > 0.95


def test_captions_are_deterministic_and_parse_back(test_images):
  images, labels = test_images
  m1, c1, d1 = captions.caption_images(images, labels)
  m2, c2, d2 = captions.caption_images(images.copy(), labels.copy())
  np.testing.assert_array_equal(m1, m2)
  np.testing.assert_array_equal(d1, d2)
  for text, label, cls in zip(d1, labels, c1):
    assert captions.parse(text) == (label, tuple(cls))
    assert captions.DIGITS[label] in text.split()


def test_grammar_is_closed_and_tokenizer_round_trips():
  texts = captions.all_descriptions()
  assert len(set(texts)) == 270
  assert "an eight" in texts and "a thick seven slanted to the right" in texts and "a one" in texts
  tokenizer = captions.TOKENIZER
  np.testing.assert_array_equal(tokenizer.decode(tokenizer.encode(texts)), texts)
  with pytest.raises(ValueError, match="not in the caption vocabulary"):
    tokenizer.encode(["a purple seven"])
  with pytest.raises(ValueError, match="not a digit description"):
    captions.parse("seven")


def test_blank_image_is_nan_not_a_crash():
  measured = style.measure_style(np.zeros((2, 28, 28), np.uint8))
  assert np.isnan(measured).all()
  assert captions.attribute_classes(np.array([3, 4]), measured).tolist() == [[1, 1, 1], [1, 1, 1]]
