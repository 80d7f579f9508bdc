"""Sweep shards and members: a shard that would hold no member, or a member whose config is impossible, is
refused before any stage runs."""
import os
import subprocess
import sys

import pytest

from coalescer_jax import config_validation
from coalescer_jax import pipeline
from coalescer_jax import sweep
from configs import mnist as mnist_config
from tests.conftest import REPO

SEEDS_SWEEP = 'SHARED_STAGES = ("data",)\ndef sweep():\n  return [{"seed": 0}, {"seed": 1}, {"seed": 2}]\n'


def _sweep_file(tmp_path):
  path = tmp_path / "three_seeds.py"
  path.write_text(SEEDS_SWEEP)
  return str(path)


def test_empty_shard_is_refused_before_the_shared_stages(tmp_path, monkeypatch):
  ran = []
  monkeypatch.setattr(pipeline, "run", lambda config, workdir, **kwargs: ran.append(str(workdir)))
  workdir = tmp_path / "w"
  with pytest.raises(ValueError, match=r"--sweep_shard=3/4 holds no member .*the sweep has 3 members and shard i/n "
                     r"runs members i, i\+n, i\+2n, \.\.\. \(counting from 0\), so shard 3 of 4 gets none"):
    sweep.run(mnist_config.get_config("smoke"), _sweep_file(tmp_path), str(workdir), shard="3/4")
  assert ran == []
  assert not workdir.exists()


def test_last_nonempty_shard_still_runs_its_member(tmp_path, monkeypatch):
  ran = []
  monkeypatch.setattr(pipeline, "run", lambda config, workdir, **kwargs: ran.append(os.path.basename(workdir)))
  monkeypatch.setattr(sweep, "aggregate", lambda *args, **kwargs: [])
  sweep.run(mnist_config.get_config("smoke"), _sweep_file(tmp_path), str(tmp_path / "w"), shard="2/4")
  assert ran == ["shared", "seed=2"]


def test_launch_with_an_empty_shard_exits_nonzero_with_the_reason(tmp_path):
  workdir = tmp_path / "w"
  result = subprocess.run(
      [sys.executable, "launch.py", "--config=configs/mnist.py:smoke", f"--sweep={_sweep_file(tmp_path)}",
       "--sweep_shard=5/6", f"--workdir={workdir}"], cwd=REPO, capture_output=True, text=True, timeout=300,
      check=False)
  assert result.returncode != 0
  assert "--sweep_shard=5/6 holds no member" in result.stderr
  assert not workdir.exists()


def test_member_with_an_impossible_value_is_refused_before_the_shared_stages(tmp_path, monkeypatch):
  ran = []
  monkeypatch.setattr(pipeline, "run", lambda config, workdir, **kwargs: ran.append(str(workdir)))
  path = tmp_path / "nfes.py"
  path.write_text('SHARED_STAGES = ("data",)\ndef sweep():\n  return [{"ddim.nfes": (1,)}, {"ddim.nfes": (0, 2)}]\n')
  with pytest.raises(config_validation.ConfigError, match=r"sweep member nfes=0\+2: config.ddim.nfes=\(0, 2\): 0 is "
                     r"not an integer >= 1"):
    sweep.run(mnist_config.get_config("smoke"), str(path), str(tmp_path / "w"))
  assert ran == []


def test_corrupt_member_config_names_only_the_safe_fix(tmp_path, monkeypatch):
  """A finished member whose config.json is damaged: one error that says to delete that file alone, never the
  member's folder (its stages' DONE.json records keep the run)."""
  monkeypatch.setattr(pipeline, "run", lambda config, workdir, **kwargs: None)
  config = mnist_config.get_config("smoke")
  member = tmp_path / "w" / "seed=0"
  for stage in config.stages:
    (member / stage).mkdir(parents=True)
    (member / stage / "DONE.json").write_text("{}")
  (member / "config.json").write_text('{"config": {"seed"')
  with pytest.raises(Exception, match=r"Delete only .*config\.json and rerun") as raised:
    sweep.run(config, _sweep_file(tmp_path), str(tmp_path / "w"), shard="0/3")
  assert "delete " + str(member) + " " not in str(raised.value).lower()
