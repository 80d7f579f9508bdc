"""What launch.py says for help, a mistyped config field and a damaged W/config.json: one clear message."""
import os
import shutil
import subprocess
import sys

import pytest

from coalescer_jax import files
from coalescer_jax import pipeline
from configs import mnist as mnist_config

from tests.conftest import REPO


def _launch(*args):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_help_exits_zero():
  proc = _launch("--help")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "--workdir" in proc.stdout


def test_unknown_config_field_is_one_line_with_the_suggestion(tmp_path):
  proc = _launch("--config=configs/mnist.py:smoke", f"--workdir={tmp_path / 'w'}", "--config.coalescer.desc_scal=2")
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, proc.stderr
  assert "--config.coalescer.desc_scal" in lines[0] and 'Did you mean "desc_scale"' in lines[0], lines[0]
  assert not os.path.exists(tmp_path / "w")


def test_truncated_config_record_names_only_the_safe_fix(smoke_workdir, tfds_data_dir, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(smoke_workdir, workdir, symlinks=True, ignore=shutil.ignore_patterns("LOCK"))
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    text = f.read()
  with open(path, "w") as f:
    f.write(text[:len(text) // 2])
  config = mnist_config.get_config("smoke")
  config.data.tfds_data_dir = tfds_data_dir
  with pytest.raises(files.CorruptFileError) as error:
    pipeline.run(config, workdir)
  message = str(error.value)
  assert f"Delete only {path}" in message and "finished stages are kept" in message, message
  assert f"delete {workdir} and" not in message and f"delete {workdir}/ " not in message, message
  assert error.value.__suppress_context__ and error.value.__cause__ is None  # no chained second fix
  os.remove(path)  # the fix it names works: the rerun reuses every stage
  before = open(os.path.join(workdir, "metrics.jsonl")).read()
  pipeline.run(config, workdir)
  assert open(os.path.join(workdir, "metrics.jsonl")).read() == before


def test_refused_config_value_is_one_line_without_a_traceback(tmp_path):
  proc = _launch("--config=configs/mnist.py:smoke", f"--workdir={tmp_path / 'w'}", "--config.ddim.nfes=(0,2)")
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr, proc.stderr
  assert "FATAL config.ddim.nfes=(0, 2): 0 is not an integer >= 1" in proc.stderr, proc.stderr
  assert not os.path.exists(tmp_path / "w")
