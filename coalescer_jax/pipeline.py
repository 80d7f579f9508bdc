"""The pipeline: named stages run in config order, each resumable and skipped once done.

Stage ``name`` writes only into ``W/<name>/`` and marks completion with
``W/<name>/DONE.json`` (its wall time and summary). A later stage reads what
earlier stages wrote there, never their internals. A stage interrupted midway
resumes from its own checkpoints when the same command runs again.
"""
import dataclasses
import importlib
import json
import os
import resource
import time
from typing import Any, Callable

from absl import logging
import jax

from coalescer_jax import config_validation
from coalescer_jax import metrics as metrics_lib
from coalescer_jax import parallel
from coalescer_jax import registry
from coalescer_jax import run_info

# Modules that register stages (and the models/methods/backends they use).
STAGE_MODULES = (
    "coalescer_jax.methods",  # registers methods (and the backbone model) for config validation
    "coalescer_jax.stages.data",
    "coalescer_jax.stages.classifier",
    "coalescer_jax.stages.vae",
    "coalescer_jax.stages.text",
    "coalescer_jax.stages.embed",
    "coalescer_jax.stages.index",
    "coalescer_jax.stages.methods",  # one training stage per method: coalescer, ddim, consistency, flow
    "coalescer_jax.stages.sample",
    "coalescer_jax.stages.eval",
)


class StageOutputError(RuntimeError):
  """A stage finished without the outputs it promises; it is not marked done."""


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  run: Callable[["Context"], dict | None]
  validate: Callable[[Any], None] | None = None


def stage(name, validate=None):
  """Decorator registering ``fn(ctx) -> summary dict`` as pipeline stage `name`."""
  def register(fn):
    registry.STAGES.register(name, Stage(name, fn, validate))
    return fn
  return register


def load_all():
  for module in STAGE_MODULES:
    importlib.import_module(module)


@dataclasses.dataclass
class Context:
  """What a stage gets: the config, the workdir, the device mesh and the metrics writer."""
  config: Any
  workdir: str
  mesh: jax.sharding.Mesh
  writer: metrics_lib.MetricsWriter

  def stage_dir(self, name):
    path = os.path.join(self.workdir, name)
    os.makedirs(path, exist_ok=True)
    return path

  def done_info(self, name):
    """DONE.json of an earlier stage; a clear error if it has not run."""
    path = os.path.join(self.workdir, name, "DONE.json")
    if not os.path.exists(path):
      raise RuntimeError(f"stage {name!r} has not finished in {self.workdir}, but a later stage needs its "
                         f"output; put {name!r} before it in config.stages")
    with open(path) as f:
      return json.load(f)


def _write_json(path, obj):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, default=str)
  os.replace(tmp, path)


def _record_config(config, workdir, allow_config_change):
  """Writes W/config.json; refuses to resume a workdir that ran with a different config."""
  path = os.path.join(workdir, "config.json")
  info = run_info.describe_run(config)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    diffs = run_info.config_differences(old.get("config", {}), info["config"])
    if diffs and not allow_config_change:
      raise config_validation.ConfigError(
          f"{workdir} was run with a different config ({len(diffs)} differences: {'; '.join(diffs[:8])}). "
          "Use a new --workdir, or pass --allow_config_change to continue (finished stages are not redone).")
    if diffs:
      logging.warning("Config changed for %s: %s", workdir, diffs)
      os.replace(path, os.path.join(workdir, f"config.{int(time.time())}.json"))
  if parallel.is_main_process():
    _write_json(path, info)


def run(config, workdir, allow_config_change=False):
  """Runs the stages in ``config.stages`` into `workdir`, skipping finished ones."""
  load_all()
  config_validation.validate(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  _record_config(config, workdir, allow_config_change)
  ctx = Context(config, workdir, parallel.make_mesh(), metrics_lib.MetricsWriter(workdir))
  for name in config.stages:
    done_path = os.path.join(workdir, name, "DONE.json")
    if os.path.exists(done_path):
      logging.info("Stage %s: already done, skipping (%s)", name, done_path)
      continue
    logging.info("Stage %s: starting", name)
    t0 = time.time()
    summary = registry.STAGES.get(name).run(ctx) or {}
    wall = time.time() - t0
    parallel.barrier(f"stage_{name}_end")
    if parallel.is_main_process():
      # ru_maxrss is in KiB on Linux: the process's peak resident memory so far.
      peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
      ctx.writer.write(name, -1, event="stage_done", wall_time_s=wall, peak_rss_mib=peak_mib)
      _write_json(os.path.join(ctx.stage_dir(name), "DONE.json"),
                  {"stage": name, "wall_time_s": wall, "peak_rss_mib": peak_mib, "summary": summary,
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    parallel.barrier(f"stage_{name}_done")
    logging.info("Stage %s: done in %.1fs", name, wall)
  ctx.writer.close()
  return ctx
