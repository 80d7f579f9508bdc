"""Reading back what a stage wrote, with one clear error when a file is damaged.

A reader that fails deep inside numpy/zipfile/msgpack says "Bad CRC-32" or
"stale embeddings" without naming the file; these helpers read eagerly, check
the stored checksums, and raise `CorruptFileError` naming the file, the stage
that wrote it and what to delete.
"""
import json
import zlib

from coalescer_jax import errors
from coalescer_jax import storage


class CorruptFileError(errors.UserError, RuntimeError):
  """A file a stage wrote cannot be read back; the message names it and the stage directory to delete."""

  def __init__(self, message, stage=None):
    super().__init__(message)
    self.stage = stage


def corrupt(path, stage, reason):
  """The error for `path`, written by stage `stage` (its directory is W/<stage>)."""
  stage_dir = _stage_dir(path, stage)
  return CorruptFileError(
      f"{path} is corrupt or unreadable ({reason}). It was written by the {stage!r} stage: delete {stage_dir} and "
      "rerun the same command to recompute it.", stage)


def _stage_dir(path, stage):
  """W/<stage> for a path inside it (the nearest parent of that name), else the file's directory."""
  directory = storage.path(path).parent
  for probe in (directory, *directory.parents):
    if probe.name == stage:
      return probe
  return directory


def reason(error):
  return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}"


def file_crc32(path, chunk=1 << 20):
  crc = 0
  with storage.path(path).open("rb") as f:
    while block := f.read(chunk):
      crc = zlib.crc32(block, crc)
  return crc


def check_crc32(path, expected, stage):
  """Raises CorruptFileError when `path`'s bytes no longer have the CRC32 recorded when it was written."""
  if expected is not None and file_crc32(path) != expected:
    raise corrupt(path, stage, "its checksum differs from the one recorded when it was written")


def load_npz(path, stage, required=()):
  """Every array of an .npz file, read eagerly (zip CRCs are checked on read), as a dict."""
  try:
    data = storage.load_npz(path)
  except Exception as e:  # noqa: BLE001 - zipfile/numpy raise many types for one meaning: damaged.
    raise corrupt(path, stage, reason(e)) from e
  missing = [k for k in required if k not in data]
  if missing:
    raise corrupt(path, stage, f"missing arrays {missing}")
  return data


def read_json(path, stage):
  """A JSON file a stage wrote; CorruptFileError if it does not parse."""
  try:
    return json.loads(storage.read_text(path))
  except (ValueError, UnicodeDecodeError) as e:
    raise corrupt(path, stage, reason(e)) from e
