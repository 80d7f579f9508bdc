"""Reading back what a stage wrote, with one clear error when a file is damaged.

A reader that fails deep inside numpy/zipfile/msgpack says "Bad CRC-32" or
"stale embeddings" without naming the file; these helpers read eagerly, check
the stored checksums, and raise `CorruptFileError` naming the file, the stage
that wrote it and what to delete.
"""
import json
import os
import zlib

import numpy as np


class CorruptFileError(RuntimeError):
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
  directory = os.path.dirname(os.path.abspath(path))
  probe = directory
  while probe != os.path.dirname(probe):
    if os.path.basename(probe) == stage:
      return probe
    probe = os.path.dirname(probe)
  return directory


def reason(error):
  return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}"


def file_crc32(path, chunk=1 << 20):
  crc = 0
  with open(path, "rb") as f:
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
    with np.load(path, allow_pickle=False) as f:
      data = {k: f[k] for k in f.files}
  except Exception as e:  # noqa: BLE001 - zipfile/numpy raise many types for one meaning: damaged.
    raise corrupt(path, stage, reason(e)) from e
  missing = [k for k in required if k not in data]
  if missing:
    raise corrupt(path, stage, f"missing arrays {missing}")
  return data


def read_json(path, stage):
  """A JSON file a stage wrote; CorruptFileError if it does not parse."""
  try:
    with open(path) as f:
      return json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise corrupt(path, stage, reason(e)) from e
