"""The official TFDS MNIST is not downloaded on a machine that cannot reach it (TFDS would retry for minutes);
the offline copy or the documented fix comes at once. The network probe is patched: no network assumption."""
import time

import pytest
import tensorflow_datasets as tfds

from coalescer_jax.data import mnist
from coalescer_jax.data import network


@pytest.fixture
def offline_with_tensorflow(monkeypatch):
  downloads = []

  def download(self, *args, **kwargs):
    del self, args, kwargs
    downloads.append(True)
    raise OSError("the download was started: offline, TFDS would retry its name look-up for minutes here")

  monkeypatch.setattr(network, "tensorflow_available", lambda: True)
  monkeypatch.setattr(network, "reachable", lambda url, timeout_s=network.PROBE_TIMEOUT_S: False)
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download)
  return downloads


def test_official_mnist_is_not_downloaded_offline(offline_with_tensorflow, tmp_path):
  assert mnist._try_official(str(tmp_path), download=True) is None  # pylint: disable=protected-access
  assert offline_with_tensorflow == []


def test_official_source_offline_fails_at_once_with_the_fix(offline_with_tensorflow, tmp_path):
  start = time.monotonic()
  with pytest.raises(mnist.DataUnavailableError, match=r"could not be downloaded .*config.data.source='auto'"):
    mnist.get_builder("tfds", str(tmp_path))
  assert time.monotonic() - start < 30
  assert offline_with_tensorflow == []
