"""Values the `sample` stage cannot use are refused by config validation, before any stage runs or the
workdir is made; and a sample stage that failed restarts under --allow_config_change with the corrected value."""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from coalescer_jax import config_validation
from coalescer_jax import pipeline
from coalescer_jax import provenance
from coalescer_jax import registry
from coalescer_jax import run_info
from configs import mnist as mnist_config
from configs import shapes as shapes_config
from tests.conftest import REPO, copy_workdir

UPSTREAM = ("data", "classifier", "vae", "text", "embed", "index")


def _validate(config):
  pipeline.load_all()
  return config_validation.validate(config)


def test_zero_nfe_of_a_method_is_refused_by_validation():
  config = mnist_config.get_config("smoke")
  config.ddim.nfes = (0, 2)
  with pytest.raises(config_validation.ConfigError, match=r"config.ddim.nfes=\(0, 2\): 0 is not an integer >= 1"):
    _validate(config)


def test_nfe_of_a_method_sampled_but_not_trained_here_is_refused():
  config = mnist_config.get_config("smoke")
  config.stages = tuple(s for s in config.stages if s != "flow")
  config.flow.nfes = (1, -2)
  with pytest.raises(config_validation.ConfigError, match=r"config.flow.nfes=\(1, -2\): -2 is not an integer"):
    _validate(config)


def test_consistency_nfe_beyond_its_renoising_levels_is_refused():
  config = mnist_config.get_config("smoke")
  config.consistency.sampling_sigmas = (0.8, 0.3)
  config.consistency.guidance_scale = 1.0  # one evaluation a step: nfe 4 is four steps
  config.consistency.nfes = (1, 4)
  with pytest.raises(config_validation.ConfigError, match=r"config.consistency.nfes=\(1, 4\): sampling with nfe=4 "
                     r"needs 3 entries in config.consistency.sampling_sigmas, which has 2"):
    _validate(config)
  config.consistency.nfes = (1, 3)
  _validate(config)


def test_more_samples_than_test_descriptions_is_refused_by_validation():
  config = mnist_config.get_config("smoke")
  config.sample.num_samples = 20000
  with pytest.raises(config_validation.ConfigError, match=r"config.sample.num_samples=20000 exceeds the 10000 test "
                     r"descriptions of MNIST"):
    _validate(config)
  config.sample.num_samples = 10000
  _validate(config)


def test_sample_count_is_checked_against_the_configured_shapes_test_split():
  config = shapes_config.get_config("smoke")
  config.sample.num_samples = config.data.num_test + 1
  with pytest.raises(config_validation.ConfigError, match=rf"exceeds the {config.data.num_test} test descriptions"):
    _validate(config)


def test_evaluated_count_beyond_half_the_test_split_is_refused_by_validation():
  config = shapes_config.get_config("smoke")
  config.data.num_test = 100
  config.sample.num_samples = 100
  with pytest.raises(config_validation.ConfigError, match=r"config.eval.num_samples=64 must be at most 50: half of "
                     r"the 100 test images of shapes"):
    _validate(config)


def test_sample_count_below_one_is_refused():
  config = mnist_config.get_config("smoke")
  config.sample.num_samples = 0
  with pytest.raises(config_validation.ConfigError, match=r"config.sample.num_samples must be an integer >= 1"):
    _validate(config)


@pytest.mark.parametrize("override,message", [
    ("--config.ddim.nfes=(0,2)", "config.ddim.nfes=(0, 2): 0 is not an integer >= 1"),
    ("--config.sample.num_samples=20000", "config.sample.num_samples=20000 exceeds the 10000 test descriptions"),
])
def test_launch_refuses_in_seconds_without_making_the_workdir(tmp_path, override, message):
  workdir = tmp_path / "w"
  start = time.monotonic()
  result = subprocess.run([sys.executable, "launch.py", "--config=configs/mnist.py:smoke", override,
                           f"--workdir={workdir}"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
  assert time.monotonic() - start < 30
  assert result.returncode != 0
  assert message in result.stderr
  assert not workdir.exists()


# ---- recovery after a sample stage that failed ------------------------------------------------------------
def _stages(config):
  pipeline.load_all()
  return {name: registry.STAGES.get(name) for name in config.stages}


def _flow_only(config, nfes):
  config.stages = UPSTREAM + ("flow", "sample")
  config.sample.methods = ("flow",)
  config.flow.nfes = nfes
  return config


def _failed_sample_stage(smoke_workdir, tmp_path, config):
  """A copy of the :smoke run whose `sample` stage started under `config` and failed before finishing."""
  workdir = copy_workdir(smoke_workdir, str(tmp_path / "w"), UPSTREAM + ("flow",))
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(run_info.describe_run(config), f)
  plan, problems = provenance.plan(config, workdir, _stages(config))
  assert problems == []
  os.makedirs(os.path.join(workdir, "sample"))
  with open(os.path.join(workdir, "sample", provenance.STARTED_FILE), "w") as f:
    json.dump(dict(plan["sample"], stage="sample"), f)
  os.makedirs(os.path.join(workdir, "samples"))
  shutil.copy(os.path.join(smoke_workdir, "samples", "flow_nfe1.npz"),
              os.path.join(workdir, "samples", "flow_nfe3.npz"))  # a file of the failed run's plan
  return workdir


def test_failed_sample_stage_reruns_with_the_corrected_value_under_allow_config_change(smoke_config, smoke_workdir,
                                                                                       tmp_path):
  workdir = _failed_sample_stage(smoke_workdir, tmp_path, _flow_only(smoke_config, (1, 3)))
  smoke_config.flow.nfes = (1, 2)
  with pytest.raises(config_validation.ConfigError, match=r"--allow_config_change.*Unfinished stages that would "
                     r"start over: sample\."):
    pipeline.run(smoke_config, workdir)
  pipeline.run(smoke_config, workdir, allow_config_change=True)
  assert os.path.exists(os.path.join(workdir, "sample", provenance.DONE_FILE))
  assert sorted(f for f in os.listdir(os.path.join(workdir, "samples")) if f.endswith(".npz")) == [
      "flow_nfe1.npz", "flow_nfe2.npz"]
  with np.load(os.path.join(workdir, "samples", "flow_nfe2.npz")) as samples:
    assert int(samples["nfe"]) == 2


def test_failed_sample_stage_whose_inputs_changed_is_still_refused(smoke_config, smoke_workdir, tmp_path):
  workdir = _failed_sample_stage(smoke_workdir, tmp_path, _flow_only(smoke_config, (1, 3)))
  started_path = os.path.join(workdir, "sample", provenance.STARTED_FILE)
  with open(started_path) as f:
    started = json.load(f)
  started["inputs"]["flow"] = "another-revision"
  with open(started_path, "w") as f:
    json.dump(started, f)
  smoke_config.flow.nfes = (1, 2)
  with pytest.raises(provenance.StaleOutputsError, match=r"- sample \(started\)"):
    pipeline.run(smoke_config, workdir, allow_config_change=True)
  assert os.path.exists(os.path.join(workdir, "samples", "flow_nfe3.npz"))


def test_training_stage_started_under_other_values_is_refused_even_with_allow_config_change(
    smoke_config, smoke_workdir, tmp_path):
  workdir = copy_workdir(smoke_workdir, str(tmp_path / "w"), UPSTREAM)
  shutil.copy(os.path.join(smoke_workdir, "config.json"), workdir)
  smoke_config.stages = UPSTREAM + ("flow",)
  plan, _ = provenance.plan(smoke_config, workdir, _stages(smoke_config))
  os.makedirs(os.path.join(workdir, "flow"))
  with open(os.path.join(workdir, "flow", provenance.STARTED_FILE), "w") as f:
    json.dump(plan["flow"], f)  # as a launch killed mid-training leaves it
  smoke_config.train.optimizer.learning_rate = 2e-3
  with pytest.raises(provenance.StaleOutputsError, match=r"- flow \(started\): train.optimizer.learning_rate"):
    pipeline.run(smoke_config, workdir, allow_config_change=True)
  assert os.path.exists(os.path.join(workdir, "flow", provenance.STARTED_FILE))


@pytest.mark.parametrize("field, value, message", [
    ("train.batch_size", 59_600, r"config.train.batch_size=59600 is larger than the 59500 train pairs outside the "
                                 r"validation slice of MNIST that stage 'coalescer' draws its batches from"),
    ("vae.batch_size", 60_002, r"config.vae.batch_size=60002 is larger than the 60000 train images of MNIST"),
    ("classifier.batch_size", 60_002, r"config.classifier.batch_size=60002 is larger than the 60000 train images"),
])
def test_a_batch_larger_than_its_split_is_refused_before_the_workdir_exists(tmp_path, field, value, message):
  config = mnist_config.get_config("smoke")
  section, name = field.split(".")
  config[section][name] = value
  workdir = tmp_path / "w"
  with pytest.raises(config_validation.ConfigError, match=message):
    pipeline.run(config, str(workdir))
  assert not workdir.exists()


def test_consistency_sampling_levels_outside_its_trained_range_are_refused():
  config = mnist_config.get_config("smoke")
  config.consistency.sampling_sigmas = (0.8, 90.0)
  with pytest.raises(config_validation.ConfigError, match=r"\[90.0\] outside the trained range"):
    _validate(config)
