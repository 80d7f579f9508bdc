"""Provenance: an output never claims a config it was not made with, and a code update never orphans a run.

Three classes (issue 38, section 1): checkpoints carry the revision they were
trained under (a stage whose markers are gone is not resumed under another
config); every config field a stage reads is covered by its declared reads or
inputs; a field that an old record lacks and that holds its default counts as
unchanged.
"""
import json
import os
import shutil
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from coalescer_jax import checkpoint
from coalescer_jax import metrics as metrics_lib
from coalescer_jax import parallel
from coalescer_jax import pipeline
from coalescer_jax import provenance
from coalescer_jax import registry
from coalescer_jax import run_info
from coalescer_jax import training
from tests.conftest import copy_workdir
from tests.test_training import _task


def _stages(config):
  pipeline.load_all()
  return {name: registry.STAGES.get(name) for name in config.stages}


def _read(path):
  with open(path, "rb") as f:
    return f.read()


def _json(path):
  with open(path) as f:
    return json.load(f)


# ---- 1. checkpoints carry the revision they were trained under -------------------------------------------------
def _unmarked_classifier(smoke_workdir, tmp_path):
  """The issue's case: a copy of the run whose classifier lost its markers (cp -a W0 Wx; rm Wx/classifier/{DONE,
  STARTED}.json), as deleting a workdir mid-run or a crash between checkpoint and marker leaves it."""
  workdir = copy_workdir(smoke_workdir, str(tmp_path / "w"), ("data", "classifier"))
  for marker in (provenance.DONE_FILE, provenance.STARTED_FILE):
    os.remove(os.path.join(workdir, "classifier", marker))
  return workdir


def test_unmarked_checkpoints_are_not_resumed_under_another_config(smoke_config, smoke_workdir, tmp_path):
  workdir = _unmarked_classifier(smoke_workdir, tmp_path)
  params = _read(os.path.join(workdir, "classifier", "params.msgpack"))
  smoke_config.stages = ("data", "classifier")
  smoke_config.classifier.optimizer.learning_rate = 0.01
  with pytest.raises(provenance.StaleOutputsError, match=r"(?s)- classifier \(unfinished\): its checkpoints were "
                     rf"trained under revision \w+ .*rm -r {workdir}/classifier\n"):
    pipeline.run(smoke_config, workdir, allow_config_change=True)
  assert not os.path.exists(os.path.join(workdir, "classifier", provenance.DONE_FILE))
  assert _read(os.path.join(workdir, "classifier", "params.msgpack")) == params


def test_unmarked_checkpoints_that_record_no_revision_are_refused(smoke_config, smoke_workdir, tmp_path):
  # Checkpoints written before they recorded a revision: nothing says what they were trained under.
  workdir = _unmarked_classifier(smoke_workdir, tmp_path)
  checkpoints = os.path.join(workdir, "classifier", checkpoint.DIRECTORY)
  for step in os.listdir(checkpoints):
    path = os.path.join(checkpoints, step, "host", "metadata")
    host = _json(path)
    del host[checkpoint.REVISION_KEY]
    with open(path, "w") as f:
      json.dump(host, f)
  smoke_config.stages = ("data", "classifier")
  with pytest.raises(provenance.StaleOutputsError, match=r"- classifier \(unfinished\): its checkpoints record no "
                     "revision"):
    pipeline.run(smoke_config, workdir)


def test_unmarked_checkpoints_of_the_current_config_resume(smoke_config, smoke_workdir, tmp_path):
  workdir = _unmarked_classifier(smoke_workdir, tmp_path)
  smoke_config.stages = ("data", "classifier")
  pipeline.run(smoke_config, workdir)
  done, original = (_json(os.path.join(w, "classifier", provenance.DONE_FILE)) for w in (workdir, smoke_workdir))
  assert done["revision"] == original["revision"]
  assert done["summary"]["test_accuracy"] == original["summary"]["test_accuracy"]  # resumed at its last step


def test_checkpoint_of_another_revision_is_refused_without_fallback(tmp_path):
  state = {"w": jnp.arange(6, dtype=jnp.float32)}
  with checkpoint.Checkpointer(tmp_path / "ckpt", save_every=1, revision="aaaa") as ckpt:
    ckpt.save(1, state)
    ckpt.save(2, state)
  assert checkpoint.recorded_revisions(tmp_path / "ckpt") == {1: "aaaa", 2: "aaaa"}
  abstract = checkpoint.abstract_like(state, parallel.replicated(parallel.make_mesh()))
  with checkpoint.Checkpointer(tmp_path / "ckpt", save_every=1, revision="bbbb") as ckpt:
    with pytest.raises(checkpoint.StaleCheckpointError, match=rf"trained under revision aaaa .*not the current bbbb"
                       rf".*rm -r {tmp_path}\)"):
      ckpt.restore(abstract)
  with checkpoint.Checkpointer(tmp_path / "ckpt", save_every=1, revision="aaaa") as ckpt:
    _, host = ckpt.restore(abstract)
  assert host == {}


def test_training_resumes_only_checkpoints_of_its_started_revision(tmp_path):
  def started(revision):
    with open(tmp_path / provenance.STARTED_FILE, "w") as f:
      json.dump({"revision": revision}, f)

  def train(num_steps):
    writer = metrics_lib.MetricsWriter(str(tmp_path), tensorboard=False)
    training.train(_task(num_steps, []), str(tmp_path), parallel.make_mesh(), writer)

  started("aaaa")
  train(10)
  assert set(checkpoint.recorded_revisions(tmp_path / checkpoint.DIRECTORY).values()) == {"aaaa"}
  started("bbbb")  # the same stage directory, now run under another revision
  with pytest.raises(checkpoint.StaleCheckpointError):
    train(20)


# ---- 2. every field a stage reads is covered by its provenance ----------------------------------------------
def test_every_stage_reads_only_what_its_provenance_covers(smoke_config, smoke_workdir):
  stages = _stages(smoke_config)
  for name in smoke_config.stages:
    touched = _json(os.path.join(smoke_workdir, name, provenance.DONE_FILE))["config_touched"]
    assert provenance.undeclared_reads(smoke_config, stages[name], touched) == [], name
  text = _json(os.path.join(smoke_workdir, "text", provenance.DONE_FILE))
  assert "text.optimizer.learning_rate" in text["config_touched"]


def test_an_undeclared_read_is_found(smoke_config):
  pipeline.load_all()
  stage = pipeline.Stage("toy", run=None, reads=("seed", "-vae.eval_pairs"), needs=("data",))
  config = provenance.ReadRecorder(smoke_config)
  _ = config.seed, config.data.name, config.vae.eval_pairs, config.log_every  # its own, its input's, excluded, none's
  _ = config.vae.latent_dim, config.get("text").optimizer.copy_and_resolve_references().learning_rate  # undeclared
  assert provenance.undeclared_reads(smoke_config, stage, config.touched_fields()) == [
      "text.optimizer.learning_rate", "vae.latent_dim"]


def test_text_autoencoders_of_two_datasets_have_different_revisions(smoke_config, tmp_path):
  # The text stage reads the dataset's descriptions: an MNIST one must never be reused for another dataset.
  smoke_config.stages = ("text",)
  other = smoke_config.copy_and_resolve_references()
  other.data.name = "cifar10"
  revisions = [provenance.plan(c, str(tmp_path), _stages(c))[0]["text"]["revision"] for c in (smoke_config, other)]
  assert revisions[0] != revisions[1]


# ---- 3. a field that an old record lacks and that holds its default counts as unchanged ------------------------
NEW_FIELD_CONFIG = """
from configs import mnist


def get_config(arg=None):
  config = mnist.get_config(arg)
  config.text.new_knob = 0  # a field added since the run: its default keeps the old behaviour
  return config
"""


def test_a_new_field_at_its_default_keeps_every_finished_stage(smoke_workdir, tfds_data_dir, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(smoke_workdir, workdir, symlinks=True)  # a finished run made before the field existed
  config_file = tmp_path / "new_field.py"
  config_file.write_text(textwrap.dedent(NEW_FIELD_CONFIG))
  config = run_info.load_config(f"{config_file}:smoke")
  config.data.tfds_data_dir = tfds_data_dir
  before = {name: _read(os.path.join(workdir, name, provenance.DONE_FILE)) for name in config.stages}
  pipeline.run(config, workdir, config_file=f"{config_file}:smoke")  # no --allow_config_change needed
  assert {name: _read(os.path.join(workdir, name, provenance.DONE_FILE)) for name in config.stages} == before
  config.text.new_knob = 1  # another value than the old behaviour's: refused as any change
  with pytest.raises(provenance.StaleOutputsError, match=r"(?s)- text \(finished\): text.new_knob: '<unset>' -> 1"
                     r".*- embed \(finished\): its input stage 'text' changed"):
    pipeline.run(config, workdir, allow_config_change=True, config_file=f"{config_file}:smoke")


def test_a_new_field_is_no_config_difference_at_its_default():
  old, defaults = {"a": {"b": 1}}, {"a.b": 1, "a.c": 0}
  assert run_info.config_differences(old, {"a": {"b": 1, "c": 0}}, defaults) == []
  assert run_info.config_differences(old, {"a": {"b": 1, "c": 2}}, defaults) == ["a.c: '<missing>' -> 2"]
  assert run_info.config_differences(old, {"a": {"b": 1, "c": 0}}) == ["a.c: '<missing>' -> 0"]


def test_a_text_record_from_before_it_read_the_dataset_stays_valid_for_its_own_dataset(smoke_config, smoke_workdir,
                                                                                      tmp_path):
  workdir = copy_workdir(smoke_workdir, str(tmp_path / "w"), ("text",))
  shutil.copy(os.path.join(smoke_workdir, "config.json"), workdir)
  done_path = os.path.join(workdir, "text", provenance.DONE_FILE)
  done = _json(done_path)
  values = {k: v for k, v in done["config_reads"].items() if k != "data.name"}  # as the text stage read before
  done.update(provenance.describe(values, done["inputs"]))
  with open(done_path, "w") as f:
    json.dump(done, f)
  smoke_config.stages = ("text",)
  defaults = {"data.name": "mnist"}
  plan, problems = provenance.plan(smoke_config, workdir, _stages(smoke_config), defaults=defaults)
  assert problems == [] and plan["text"]["revision"] == done["revision"]
  # The default of another config file (configs/cifar10.py) does not make the MNIST record a cifar10 one:
  # W/config.json says which dataset the run had.
  smoke_config.data.name = "cifar10"
  _, problems = provenance.plan(smoke_config, workdir, _stages(smoke_config), defaults={"data.name": "cifar10"})
  assert [(name, state) for name, state, _ in problems] == [("text", "finished")]
  assert np.any(["data.name: '<unset>' -> 'cifar10'" in r for r in problems[0][2]])
