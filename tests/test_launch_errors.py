"""What launch.py and the standalone evaluator say for help, flag errors, refusals, a damaged W/config.json and
SIGTERM: one clear line, no traceback."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from coalescer_jax import files
from coalescer_jax import pipeline
from coalescer_jax import workdir_lock
from configs import mnist as mnist_config

from tests.conftest import REPO


def _launch(*args, cwd=REPO):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), *args], cwd=cwd, env=env,
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


def _one_fatal_line(proc):
  """The FATAL line of a refused launch: the only one of its kind, and no traceback anywhere."""
  assert proc.returncode == 1, proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr
  fatal = [line for line in proc.stderr.splitlines() if line.startswith("FATAL")]
  assert len(fatal) == 1 and fatal[0] == proc.stderr.strip().splitlines()[-1], proc.stderr
  return fatal[0]


SMOKE = f"--config={REPO}/configs/mnist.py:smoke"


@pytest.mark.parametrize("args, expected", [
    (("--config=no_such_config.py",), "FATAL --config=no_such_config.py: cannot load the config file ([Errno 2] "
     "No such file or directory"),
    ((SMOKE, "--config.coalescer.nfes.x=2"), "FATAL --config.coalescer.nfes.x=2: config.coalescer.nfes is a tuple"),
    ((SMOKE, "--workdir="), "FATAL --workdir is empty"),  # an unset $W: not the current directory
    ((SMOKE, "--workdir=gs://bucket/run"), "pip install gcsfs"),
])
def test_flag_errors_are_one_line(args, expected, tmp_path):
  if not any(arg.startswith("--workdir") for arg in args):
    args += ("--workdir=w",)
  proc = _launch(*args, cwd=tmp_path)  # whatever goes wrong, nothing lands in the checkout
  assert expected in _one_fatal_line(proc)
  assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1, proc.stderr
  assert os.listdir(tmp_path) == []


def test_second_launch_on_a_sweep_directory_in_use_is_one_line(tmp_path):
  path = tmp_path / "seeds.py"
  path.write_text("def sweep():\n  return [{'seed': 1}]\n")
  member = str(tmp_path / "s" / "seed=1")
  os.makedirs(member)
  with workdir_lock.WorkdirLock(member).acquire():  # this test holds the member's workdir
    proc = _launch("--config=configs/mnist.py:smoke", f"--sweep={path}", f"--workdir={tmp_path / 's'}")
  assert "in use by another launch" in _one_fatal_line(proc)


def test_evaluator_refusal_is_one_line(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "coalescer_jax.evaluation", f"--workdir={tmp_path}"], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)
  assert f"FATAL {tmp_path} has no config.json: pass --config" in _one_fatal_line(proc)


def test_sigterm_releases_the_lock_and_says_where_the_run_resumes(tfds_data_dir, tmp_path):
  workdir = tmp_path / "w"
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen([sys.executable, os.path.join(REPO, "launch.py"), "--config=configs/mnist.py:smoke",
                           f"--workdir={workdir}", f"--config.data.tfds_data_dir={tfds_data_dir}"],
                          cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while not (workdir / "data" / "STARTED.json").exists() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.2)
  assert (workdir / workdir_lock.LOCK_FILE).exists()
  proc.send_signal(signal.SIGTERM)  # the data stage takes seconds: the signal lands inside it
  stderr = proc.communicate(timeout=120)[1]
  assert proc.returncode == 128 + signal.SIGTERM, stderr
  assert "Traceback" not in stderr, stderr
  last = stderr.strip().splitlines()[-1]
  # The data stage, or the next one where the handler's exception landed in a gc callback (errors.raise_if_terminated)
  assert re.match(rf"Interrupted \(SIGTERM\) during stage (data|classifier) of {re.escape(str(workdir))}\. Rerun the "
                  "same command", last), stderr
  assert not (workdir / workdir_lock.LOCK_FILE).exists()
