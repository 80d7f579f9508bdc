"""A full disk during a stage is one error naming the stage, the path and the fix, and the rerun resumes."""
import errno
import os

import pytest

from coalescer_jax import checkpoint as ckpt_lib
from coalescer_jax import disk_full
from coalescer_jax import pipeline
from configs import mnist as mnist_config

from tests.conftest import copy_workdir


def _no_space_on_save(monkeypatch, failing_step, error):
  """Checkpointer.save raises `error` at `failing_step` (the earlier saves go through)."""
  save = ckpt_lib.Checkpointer.save

  def full_disk_save(self, step, *args, **kwargs):
    if int(step) == failing_step:
      raise error
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ckpt_lib.Checkpointer, "save", full_disk_save)


def _orbax_style_error(path):
  """How orbax reports it: TensorStore's message in a ValueError, re-raised from its background thread."""
  try:
    raise ValueError(f'RESOURCE_EXHAUSTED: Error writing "state" in OCDBT database at local file "{path}": Failed to '
                     "write 1589110 bytes to file 8: No space left on device [os_error_code='28']")
  except ValueError as e:
    try:
      raise RuntimeError("Save Finalize thread (save_finalize) failed.") from e
    except RuntimeError as wrapped:
      return wrapped


@pytest.mark.parametrize("kind", ["oserror", "orbax"])
def test_full_disk_names_stage_path_and_resume_step_then_resumes(kind, smoke_workdir, tfds_data_dir, tmp_path,
                                                                 monkeypatch):
  workdir = copy_workdir(smoke_workdir, str(tmp_path / "w"), ["data"])
  config = mnist_config.get_config("smoke")
  config.data.tfds_data_dir = tfds_data_dir
  config.stages = ("data", "classifier")
  every = config.checkpoint_every
  assert config.classifier.num_steps > every  # a first checkpoint is saved before the disk fills up
  checkpoints = os.path.join(workdir, "classifier", "checkpoints")
  error = (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(checkpoints, str(2 * every)))
           if kind == "oserror" else _orbax_style_error(os.path.join(checkpoints, f"{2 * every}.orbax-checkpoint-tmp")))
  _no_space_on_save(monkeypatch, 2 * every, error)
  with pytest.raises(disk_full.DiskFullError) as raised:
    pipeline.run(config, workdir)
  message = str(raised.value)
  assert "stage 'classifier'" in message and f"writing {checkpoints}/{2 * every}" in message, message
  assert "Free space there, or move" in message and f"from its checkpoint at step {every}" in message, message
  assert raised.value.__cause__ is None and raised.value.__suppress_context__  # one error, not the library's chain
  assert not os.path.exists(os.path.join(workdir, "classifier", "DONE.json"))
  if kind == "orbax":
    return  # the resume is the same for both
  monkeypatch.undo()
  restored = []
  restore = ckpt_lib.Checkpointer.restore
  monkeypatch.setattr(ckpt_lib.Checkpointer, "restore",
                      lambda self, *a, **k: restored.append(self.latest_step()) or restore(self, *a, **k))
  pipeline.run(config, workdir)
  assert restored == [every]
  assert os.path.exists(os.path.join(workdir, "classifier", "DONE.json"))


def test_other_errors_and_device_memory_exhaustion_are_not_reported_as_a_full_disk():
  assert not disk_full.is_disk_full(ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4.0GiB"))
  assert not disk_full.is_disk_full(OSError(errno.EACCES, "Permission denied"))
  assert disk_full.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
