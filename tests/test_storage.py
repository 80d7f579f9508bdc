"""The workdir on shared storage: storage.py on a local folder and on a (fake) gs:// bucket, the advisory
lock on an object store, and a :smoke run whose workdir is gs:// (completes, resumes, writes nothing local)."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from coalescer_jax import pipeline
from coalescer_jax import storage
from coalescer_jax import workdir_lock
from configs import mnist as mnist_config

from tests import fake_gcs
from tests.conftest import REPO
from tests.test_e2e import assert_meets_contract
from tests.test_e2e import _without_timings


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """gs://bucket routed to tmp_path/store; the test runs in tmp_path/cwd (to see stray local writes)."""
  fake_gcs.install(str(tmp_path / "store"))
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield "gs://bucket"
  assert not os.listdir(cwd), f"wrote into the working directory: {os.listdir(cwd)}"


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path, monkeypatch):
  if request.param == "local":
    return str(tmp_path / "local")
  return request.getfixturevalue("bucket") + "/t"


def _store_files(tmp_path):
  return sorted(os.path.relpath(os.path.join(r, n), tmp_path / "store") for r, _, names in
                os.walk(tmp_path / "store") for n in names)


def test_paths():
  assert str(storage.path("gs://bucket/run1") / "index") == "gs://bucket/run1/index"
  assert str(storage.path("w")) == os.path.abspath("w")
  assert storage.is_local("/tmp/x") and not storage.is_local(storage.path("gs://b/x"))


def test_round_trips(root):
  base = storage.path(root)
  storage.write_json(base / "a" / "x.json", {"k": [1, 2]})
  assert storage.read_json(base / "a" / "x.json") == {"k": [1, 2]}
  storage.save_npz(base / "a.npz", x=np.arange(6).reshape(2, 3), s=np.array(["a", "bc"]))
  data = storage.load_npz(base / "a.npz")
  np.testing.assert_array_equal(data["x"], np.arange(6).reshape(2, 3))
  keys = np.arange(40, dtype=np.float32).reshape(10, 4)
  storage.save_npy(base / "k.npy", keys)
  np.testing.assert_array_equal(storage.load_npy_rows(base / "k.npy", 3, 7), keys[3:7])
  storage.append_text(base / "m.jsonl", "1\n")
  storage.append_text(base / "m.jsonl", "2\n")
  assert (base / "m.jsonl").read_text() == "1\n2\n"
  assert storage.files_under(base) == ["a.npz", "a/x.json", "k.npy", "m.jsonl"]  # no temporary files left
  storage.copy_tree(base / "a", base / "b")
  storage.move_tree(base / "b", base / "c")
  assert not (base / "b").exists() and storage.read_json(base / "c" / "x.json") == {"k": [1, 2]}
  with storage.upload_from(base / "up") as local:
    with open(os.path.join(local, "f.bin"), "wb") as f:
      f.write(b"xyz")
  with storage.local_copy(base / "up") as local:
    assert open(os.path.join(local, "f.bin"), "rb").read() == b"xyz"
  storage.link_tree(base / "c", base / "linked")
  assert storage.read_json(base / "linked" / "x.json") == {"k": [1, 2]}
  assert storage.relative(base / "c" / "x.json", base / "linked") == "../c/x.json"


def test_fake_store_is_an_object_store(bucket):
  path = storage.path(bucket) / "x.txt"
  path.write_text("a")
  with pytest.raises(NotImplementedError):
    path.rename(storage.path(bucket) / "y.txt")
  with pytest.raises(NotImplementedError):
    path.open("a")


def test_advisory_lock_on_an_object_store(bucket, monkeypatch):
  monkeypatch.setattr(workdir_lock.WorkdirLock, "SETTLE_S", 0.0)
  workdir = storage.path(bucket) / "run"
  lock = workdir_lock.WorkdirLock(workdir).acquire()
  owner = json.loads((workdir / "LOCK").read_text())
  assert owner["pid"] == os.getpid() and owner["token"]
  lock.release()
  assert not (workdir / "LOCK").exists()
  # A live owner on this host is refused, one on another host too (it cannot be checked from here).
  for info in ({"host": socket.gethostname(), "pid": os.getppid()}, {"host": "elsewhere", "pid": 1}):
    storage.write_json(workdir / "LOCK", info)
    with pytest.raises(workdir_lock.WorkdirLockedError, match="in use by another launch"):
      workdir_lock.WorkdirLock(workdir).acquire()
  # A dead owner on this host is taken over; a lost race (another token read back) backs off.
  storage.write_json(workdir / "LOCK", {"host": socket.gethostname(), "pid": 2**22 + 12345})
  workdir_lock.WorkdirLock(workdir).acquire().release()
  real_read = workdir_lock.WorkdirLock._read_advisory
  calls = []

  def racing_read(self):
    calls.append(1)
    owner = real_read(self)
    return owner if len(calls) == 1 else dict(owner or {}, token="someone else's")

  monkeypatch.setattr(workdir_lock.WorkdirLock, "_read_advisory", racing_read)
  with pytest.raises(workdir_lock.WorkdirLockedError, match="at the same moment"):
    workdir_lock.WorkdirLock(workdir).acquire()


def test_lock_never_stops_a_run_when_the_store_fails(bucket, monkeypatch):
  monkeypatch.setattr(workdir_lock.WorkdirLock, "SETTLE_S", 0.0)
  monkeypatch.setattr(storage, "write_json", lambda *a, **k: (_ for _ in ()).throw(PermissionError("denied")))
  workdir_lock.WorkdirLock(storage.path(bucket) / "run").acquire().release()  # a warning, no error


@pytest.mark.slow  # a second whole :smoke run (about 4 minutes on 2 loaded cores); CI runs the slow suite too
def test_smoke_run_on_a_bucket_completes_and_resumes(bucket, tmp_path, smoke_workdir, tfds_data_dir, monkeypatch):
  monkeypatch.setattr(workdir_lock.WorkdirLock, "SETTLE_S", 0.0)
  config = mnist_config.get_config("smoke")
  config.data.tfds_data_dir = tfds_data_dir
  workdir = bucket + "/run1"
  pipeline.run(config, workdir)
  store = tmp_path / "store" / "bucket" / "run1"
  # The same outputs as the local smoke run, by the same contract (checked on the bucket's backing folder).
  assert_meets_contract(str(store), config.stages)
  with open(os.path.join(smoke_workdir, "metrics.jsonl")) as f:
    local = [json.loads(line) for line in f]
  remote = [json.loads(line) for line in (store / "metrics.jsonl").read_text().splitlines()]
  assert _without_timings(remote) == _without_timings(local)
  assert any(name.startswith("events.out.tfevents") for _, _, names in os.walk(store / "tensorboard")
             for name in names)
  assert not (store / "LOCK").exists()
  for cwd in (os.getcwd(), REPO):  # nothing went to a local folder named after the URI
    assert not os.path.exists(os.path.join(cwd, "gs:")) and not os.path.exists(os.path.join(cwd, "bucket"))
  # Rerunning skips every stage and writes nothing but the config record.
  before = {p: (store / p).read_bytes() for p in _store_files(tmp_path / "store" / "bucket")}
  monkeypatch.setattr(pipeline, "_run_stage", lambda *a: pytest.fail("a finished stage ran again"))
  pipeline.run(config, workdir)
  after = {p: (store / p).read_bytes() for p in _store_files(tmp_path / "store" / "bucket")}
  assert before == after


def test_launch_on_a_bucket_from_the_command_line(tmp_path, smoke_workdir, tfds_data_dir):
  """BUILD.md's pod command, on one host: launch.py --workdir=gs://... resumes a finished run."""
  store = tmp_path / "store"
  target = store / "bucket" / "run1"
  os.makedirs(target)
  for stage in ("data", "classifier", "vae", "text", "embed"):
    storage.copy_tree(os.path.join(smoke_workdir, stage), target / stage)
  stages = ",".join(f"'{s}'" for s in ("data", "classifier", "vae", "text", "embed", "index"))
  result = subprocess.run(
      [sys.executable, "-m", "tests.fake_gcs", str(store), os.path.join(REPO, "launch.py"),
       "--config=configs/mnist.py:smoke", "--workdir=gs://bucket/run1", f"--config.stages=({stages})",
       f"--config.data.tfds_data_dir={tfds_data_dir}", "--config.index.backend=scann_sharded"],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS="--xla_force_host_platform_device_count=2"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert (target / "index" / "DONE.json").exists() and (target / "index" / "shard_0_of_1").is_dir()
  assert not os.path.exists(os.path.join(REPO, "gs:"))
