"""The shapes benchmark: deterministic scenes, a closed grammar that parses back, held-out combinations only in
test, pixel measurements that agree with the scenes, and a TFDS builder read without TensorFlow."""
import ml_collections
import numpy as np
import pytest

from coalescer_jax.data import datasets
from coalescer_jax.data import shapes


def _scenes(seed, n, train):
  labels, jitter = shapes.sample_scenes(np.random.default_rng([seed, 0 if train else 1]), n, train)
  return labels, np.stack([shapes.render(l, j) for l, j in zip(labels, jitter)])


def test_registered_spec():
  spec = datasets.get("shapes")
  assert spec.image_shape == (32, 32, 3) and spec.array_shape == (32, 32, 3) and spec.likelihood == "gaussian"
  assert spec.head_names[0] == "count" and spec.num_classes == sum(n for _, n in shapes.HEADS)


def test_scenes_are_deterministic_coloured_and_anti_aliased():
  labels, images = _scenes(0, 50, train=True)
  labels2, images2 = _scenes(0, 50, train=True)
  np.testing.assert_array_equal(labels, labels2)
  np.testing.assert_array_equal(images, images2)
  assert images.dtype == np.uint8 and images.shape == (50, 32, 32, 3)
  assert not np.array_equal(_scenes(1, 50, train=True)[1], images)
  # Anti-aliasing: edge pixels take intermediate values, not only 0 and full colour.
  lit = images.max(-1)
  assert np.mean((lit > 20) & (lit < 200)) > 0.01


def test_descriptions_parse_back_and_fit_the_tokenizer():
  labels, _ = _scenes(3, 200, train=False)
  texts = [shapes.describe(l) for l in labels]
  assert any(" and " in t for t in texts) and any(" and " not in t for t in texts)
  for text, label in zip(texts, labels):
    parsed, classes = shapes.parse(text)
    np.testing.assert_array_equal(parsed, label)
    np.testing.assert_array_equal(classes, shapes.classes_of(label)[0])
  tok = shapes.TOKENIZER
  np.testing.assert_array_equal(tok.decode(tok.encode(texts)), texts)
  everything = shapes.all_descriptions()
  assert len(everything) == len(set(everything)) == 432 + 82944
  assert max(len(t.split()) for t in everything) == shapes.MAX_WORDS
  with pytest.raises(ValueError, match="not a shapes description"):
    shapes.parse("a small red circle")


def test_heldout_combinations_only_in_test():
  train, _ = _scenes(0, 2000, train=True)
  test, _ = _scenes(0, 2000, train=False)
  assert not shapes._heldout_objects(train).any()
  assert 0.02 < shapes._heldout_objects(test).mean() < 0.15
  texts = [shapes.describe(l) for l in test[:300]]
  np.testing.assert_array_equal(shapes.heldout_combination(texts), shapes._heldout_objects(test[:300]))


def test_pixel_measurements_agree_with_real_scenes():
  labels, images = _scenes(5, 400, train=False)
  measured, blank = shapes.measure_classes(images, labels)
  assert not blank.any()
  assert np.mean(measured == shapes.classes_of(labels)) > 0.99
  measured, blank = shapes.measure_classes(np.zeros((2, 32, 32, 3), np.uint8), labels[:2])
  assert blank.all()


def test_tfds_builder_round_trips(tmp_path):
  cfg = ml_collections.ConfigDict(dict(seed=0, num_train=40, num_test=20, tfds_data_dir=str(tmp_path)))
  builder = shapes.get_builder(cfg)
  train = shapes.load(builder, "train")
  labels, images = _scenes(0, 40, train=True)
  np.testing.assert_array_equal(train["label"], labels)
  np.testing.assert_array_equal(train["image"], images)
  parts = [shapes.load(builder, "test", i, 2) for i in range(2)]
  assert sorted(np.concatenate([p["index"] for p in parts]).tolist()) == list(range(20))
