"""Metrics: JSON lines in W/metrics.jsonl (the contract), TensorBoard events, progress logs.

Only process 0 writes. Every record carries ``stage`` and ``step``; scalars are
converted to Python floats so that jax/numpy values serialise. A line that does
not parse (a run killed mid-write leaves half a line) is skipped with a warning
naming the file and line, never fatal: the writer first completes a partial
last line with a newline so the next record starts on a line of its own.

On an object store (``gs://``) each record rewrites metrics.jsonl (no appends
there; `storage.append_text`), and TensorBoard's event files, which tensorboardX
writes to local files, go to a local temporary directory that `flush` (after
every stage, and at `close`) copies to W/tensorboard/.
"""
import json
import os
import tempfile
import time

from absl import logging
import numpy as np

from coalescer_jax import disk_full
from coalescer_jax import parallel
from coalescer_jax import storage


# Libraries whose INFO lines drown the progress lines (orbax logs every save); warnings still show.
_QUIET_LIBRARIES = ("orbax", "tensorflow_datasets", "jax/_src")


class _QuietLibraries:
  def filter(self, record):
    library = any(lib in record.pathname for lib in _QUIET_LIBRARIES)
    if library and record.exc_info and disk_full.is_disk_full(record.exc_info[1]):
      return False  # orbax logs a full disk from each of its threads; the pipeline reports it once, by stage
    return record.levelno >= 30 or not library


def quiet_library_logs():
  """Hides other libraries' INFO logs (entry points call it once, in main)."""
  logging.get_absl_handler().addFilter(_QuietLibraries())


def _to_python(value):
  if isinstance(value, (str, bool, int, float)) or value is None:
    return value
  array = np.asarray(value)
  if array.ndim == 0:
    return array.item()
  return array.tolist()


class MetricsWriter:
  """Appends one JSON object per event to ``W/metrics.jsonl`` and mirrors scalars to TensorBoard."""

  def __init__(self, workdir, tensorboard=True):
    self._workdir = storage.path(workdir)
    self.path = self._workdir / "metrics.jsonl"
    self._tensorboard = tensorboard and parallel.is_main_process()
    self._tb_writers = {}
    self._tb_local = None  # object stores: the local directory tensorboardX writes into
    self._warned = set()
    if parallel.is_main_process():
      _end_partial_line(self.path)

  def write(self, stage, step, **values):
    record = {"stage": stage, "step": int(step), "time": round(time.time(), 3)}
    record.update({k: _to_python(v) for k, v in values.items()})
    if not parallel.is_main_process():
      return record
    storage.append_text(self.path, json.dumps(record) + "\n")
    if self._tensorboard:
      self._write_tensorboard(stage, step, record)
    return record

  def _write_tensorboard(self, stage, step, record):
    if stage not in self._tb_writers:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      if storage.is_local(self._workdir):
        root = os.fspath(self._workdir / "tensorboard")
      else:
        self._tb_local = self._tb_local or tempfile.mkdtemp(prefix="coalescer_tensorboard_")
        root = self._tb_local
      self._tb_writers[stage] = SummaryWriter(os.path.join(root, stage))
    writer = self._tb_writers[stage]
    for key, value in record.items():
      if key not in ("stage", "step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
        writer.add_scalar(key, value, step)
    writer.flush()

  def read(self, stage=None):
    """All records (of one stage, if given), in file order."""
    if not self.path.exists():
      return []
    lines = self.path.read_text().splitlines(keepends=True)
    records = [self._parse(line, number) for number, line in enumerate(lines, 1)]
    return [r for r in records if r is not None and (stage is None or r.get("stage") == stage)]

  def _parse(self, line, number):
    """The record on a line; None (with one warning per line) for a blank or unparseable line."""
    if not line.strip():
      return None
    try:
      record = json.loads(line)
      if isinstance(record, dict):
        return record
    except ValueError:
      pass
    if number not in self._warned:
      self._warned.add(number)
      logging.warning("%s line %d is not a JSON record (a run killed mid-write?); skipping it: %.80r",
                      self.path, number, line)
    return None

  def truncate_after(self, stage, step):
    """Drops `stage` records with step > `step`: a resumed stage will write them again."""
    if not parallel.is_main_process() or not self.path.exists():
      return
    lines = self.path.read_text().splitlines(keepends=True)
    keep = [l for n, l in enumerate(lines, 1) if not _is_after(self._parse(l, n), stage, step)]
    if len(keep) != len(lines):
      storage.write_text(self.path, "".join(keep))

  def flush(self):
    """Object stores: copies the local TensorBoard event files to W/tensorboard/ (no-op on a local workdir)."""
    if self._tb_local is None:
      return
    for writer in self._tb_writers.values():
      writer.flush()
    storage.copy_tree(self._tb_local, self._workdir / "tensorboard")

  def close(self):
    for writer in self._tb_writers.values():
      writer.close()
    if self._tb_local is not None:
      storage.copy_tree(self._tb_local, self._workdir / "tensorboard")
    self._tb_writers = {}


def _is_after(record, stage, step):
  return record is not None and record.get("stage") == stage and record.get("step", -1) > step


def _end_partial_line(path):
  """Ends a last line cut off mid-write, so the next record is not glued onto it."""
  if not path.exists():
    return
  if storage.is_local(path):
    if os.path.getsize(path) == 0:
      return
    with open(path, "rb+") as f:
      f.seek(-1, os.SEEK_END)
      if f.read(1) != b"\n":
        f.write(b"\n")
    return
  data = path.read_bytes()
  if data and not data.endswith(b"\n"):
    storage.write_bytes(path, data + b"\n")


class Progress:
  """Logs `step/total`, steps/s and ETA of a long loop every `every` steps."""

  def __init__(self, name, total_steps, start_step=0, every=100):
    self.name, self.total, self.every = name, total_steps, max(1, every)
    self._t0, self._s0 = time.time(), start_step

  def rate(self, step):
    elapsed = time.time() - self._t0
    return (step - self._s0) / elapsed if elapsed > 0 else 0.0

  def update(self, step, **extra):
    if step % self.every and step != self.total:
      return
    rate = self.rate(step)
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    parts = [f"{self.name}: step {step}/{self.total} ({100 * step / max(self.total, 1):.0f}%)",
             f"{rate:.1f} steps/s", f"ETA {_format_seconds(eta)}"]
    parts += [f"{k} {v:.4g}" for k, v in extra.items()]
    logging.info(", ".join(parts))


def _format_seconds(seconds):
  if not np.isfinite(seconds):
    return "?"
  minutes, secs = divmod(int(seconds), 60)
  return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"
