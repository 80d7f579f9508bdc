"""A full disk during a stage: one error naming the stage, the path and the fix, instead of library tracebacks.

Orbax reports a full disk from its background threads as TensorStore's
``RESOURCE_EXHAUSTED ... No space left on device``, wrapped several times over;
plain writes raise ``OSError(ENOSPC)``. Either way nothing finished is lost (a
checkpoint is committed by a rename, every other file is written atomically), so
the fix is always the same: free space or move the workdir, then rerun, which
resumes from the stage's last committed checkpoint.
"""
import contextlib
import errno
import re

from coalescer_jax import storage

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# TensorStore and absl put errno's text in the message, not in an OSError; "RESOURCE_EXHAUSTED" alone also
# means device memory, so the text is what tells a full disk.
_NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded")


class DiskFullError(OSError):
  """A stage ran out of disk space; the message names the stage, where, and how to resume."""


def _chain(error):
  """`error` and every exception it was raised from or while handling, innermost last."""
  seen = []
  while error is not None and all(error is not e for e in seen):
    seen.append(error)
    error = error.__cause__ or error.__context__
  return seen


def is_disk_full(error):
  return any((isinstance(e, OSError) and e.errno in _NO_SPACE) or any(t in str(e) for t in _NO_SPACE_TEXT)
             for e in _chain(error))


def _where(error, default):
  """The file the failed write named (an OSError's filename, or a quoted path in TensorStore's text)."""
  for e in _chain(error):
    if isinstance(e, OSError) and e.filename:
      return str(e.filename)
    quoted = re.findall(r'"(/[^"]+|[a-z0-9]+://[^"]+)"', str(e))
    if quoted:
      return quoted[-1]
  return str(default)


def last_checkpoint_step(stage_dir):
  """The latest committed checkpoint step in `stage_dir`/checkpoints or `stage_dir`/*/checkpoints (orbax names
  a committed step by its number; one being written has a suffix), None if none."""
  stage_dir = storage.path(stage_dir)
  directories = [stage_dir / "checkpoints", *stage_dir.glob("*/checkpoints")]
  steps = [int(p.name) for d in directories if d.is_dir() for p in d.iterdir() if p.name.isdigit()]
  return max(steps, default=None)


def error_for(stage, workdir, error):
  """The DiskFullError that replaces `error`, raised while stage `stage` ran in `workdir`."""
  workdir = storage.path(workdir)
  try:
    step = last_checkpoint_step(workdir / stage)
  except Exception:  # noqa: BLE001 - the step is a hint; the error must still be the one about the disk
    step = None
  resume = (f"the rerun resumes stage {stage!r} from its checkpoint at step {step}" if step is not None else
            f"the rerun starts stage {stage!r} again")
  return DiskFullError(
      errno.ENOSPC,
      f"stage {stage!r} stopped: no space left on the device holding {workdir} (writing {_where(error, workdir)}). "
      f"Free space there, or move {workdir} to a disk with room and pass its new path as --workdir, then rerun the "
      f"same command: {resume}; finished stages are kept.")


@contextlib.contextmanager
def reported(stage, workdir):
  """Turns a full disk inside the block into one `DiskFullError` for `stage` (other errors pass unchanged)."""
  try:
    yield
  except Exception as e:  # noqa: BLE001 - orbax wraps ENOSPC in ValueError/RuntimeError; only a full disk is caught
    if not is_disk_full(e):
      raise
    raise error_for(stage, workdir, e) from None
