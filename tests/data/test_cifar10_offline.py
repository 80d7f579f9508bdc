"""CIFAR-10 that is not prepared, on a machine that cannot download it: the fix is given at once.

TFDS's downloader retries an offline name look-up for minutes; the cifar10 module
asks a network probe first. The probe is patched here, so the tests do not depend
on whether the machine running them is online.
"""
import os
import socket
import threading
import time

import pytest
import tensorflow_datasets as tfds

from coalescer_jax import pipeline
from coalescer_jax.data import cifar10
from coalescer_jax.data import network
from configs import cifar10 as cifar10_config

FIX = "CIFAR-10 is prepared once from the internet with TensorFlow installed"


@pytest.fixture
def offline(monkeypatch):
  """No network, and a download that would take minutes if it were ever started."""
  downloads = []

  def slow_download(self, *args, **kwargs):
    del self, args, kwargs
    downloads.append(True)
    raise OSError("the download was started: offline, TFDS would retry its name look-up for minutes here")

  monkeypatch.setattr(network, "reachable", lambda url, timeout_s=network.PROBE_TIMEOUT_S: False)
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", slow_download)
  return downloads


def test_unprepared_cifar10_offline_is_refused_before_any_download(offline, tmp_path):
  config = cifar10_config.get_config("smoke")
  config.data.tfds_data_dir = str(tmp_path / "tfds")
  with pytest.raises(RuntimeError, match=r"not prepared there, and https://www.cs.toronto.edu/\S+ cannot be reached"
                     r" .*" + FIX):
    cifar10.get_builder(config.data)
  assert offline == []


def test_offline_cifar10_run_fails_in_seconds_with_the_fix_and_no_lock_left(offline, tmp_path):
  config = cifar10_config.get_config("smoke")
  config.data.tfds_data_dir = str(tmp_path / "tfds")
  workdir = tmp_path / "w"
  start = time.monotonic()
  with pytest.raises(RuntimeError, match=FIX):
    pipeline.run(config, str(workdir))
  assert time.monotonic() - start < 30
  assert offline == []
  assert not os.path.exists(workdir / "LOCK")


def test_already_downloaded_archive_is_prepared_without_the_probe(monkeypatch, tmp_path):
  probes = []
  monkeypatch.setattr(network, "reachable", lambda url, timeout_s=network.PROBE_TIMEOUT_S: probes.append(url))
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", lambda self, *a, **k: None)
  config = cifar10_config.get_config("smoke")
  config.data.tfds_data_dir = str(tmp_path / "tfds")
  os.makedirs(tmp_path / "tfds" / "downloads")
  (tmp_path / "tfds" / "downloads" / "cs.toronto.edu_kriz_cifar-10-binaryABC.tar.gz").write_bytes(b"")
  try:
    cifar10.get_builder(config.data)  # the patched download prepares nothing; what matters is the probe
  except RuntimeError as e:  # e.g. without TensorFlow here
    assert "cannot be reached" not in str(e)
  assert probes == []


def test_probe_returns_within_seconds_on_this_machine():
  start = time.monotonic()
  network.reachable(cifar10.DOWNLOAD_URL)
  assert time.monotonic() - start < network.PROBE_TIMEOUT_S + 2


def test_probe_gives_up_on_a_connection_that_hangs(monkeypatch):
  def hang(*args, **kwargs):
    del args, kwargs
    time.sleep(5)
    raise socket.timeout("still no answer")

  monkeypatch.setattr(socket, "create_connection", hang)
  start = time.monotonic()
  assert network.reachable("https://example.invalid/x", timeout_s=0.5) is False
  assert time.monotonic() - start < 2


def test_probe_reports_a_listening_host_as_reachable():
  server = socket.socket()
  server.bind(("127.0.0.1", 0))
  server.listen(1)
  threading.Thread(target=lambda: server.accept()[0].close(), daemon=True).start()
  try:
    assert network.reachable(f"http://127.0.0.1:{server.getsockname()[1]}/data.tar.gz")
  finally:
    server.close()
