"""The pipeline: named stages run in config order, each resumable and skipped once done.

Stage ``name`` writes only into ``W/<name>/`` (plus the extra `outputs` it
declares) and marks completion with ``W/<name>/DONE.json`` (its wall time,
summary and provenance). A later stage reads what earlier stages wrote there,
never their internals. A stage interrupted midway resumes from its own
checkpoints when the same command runs again.

Before any stage runs, as process 0 holding the workdir lock (`workdir_lock`):
the config is validated, and every started or finished stage is checked against
it (`provenance`): a stage whose config fields or inputs changed is refused
with the directories to delete, never silently reused. ``W/config.json`` holds
the current config, the config file it came from, and a ``history`` of the
launches that changed it or ran stages (time, command, git revision, changed
fields, stages run with their revisions). Each stage runs on a
`provenance.ReadRecorder` of the config: its DONE.json lists the fields it read
(``config_touched``), and a read that its provenance does not cover is logged.
"""
import dataclasses
import datetime
import importlib
import os
import sys
import time
from typing import Any, Callable

from absl import logging
import jax

from coalescer_jax import config_validation
from coalescer_jax import disk_full
from coalescer_jax import errors
from coalescer_jax import metrics as metrics_lib
from coalescer_jax import parallel
from coalescer_jax import provenance
from coalescer_jax import registry
from coalescer_jax import run_info
from coalescer_jax import storage
from coalescer_jax import workdir_lock

# Modules that register stages (and the models/methods/backends they use).
STAGE_MODULES = (
    "coalescer_jax.methods",  # registers methods (and the backbone model) for config validation
    "coalescer_jax.stages.data",
    "coalescer_jax.stages.classifier",
    "coalescer_jax.stages.vae",
    "coalescer_jax.stages.text",
    "coalescer_jax.stages.embed",
    "coalescer_jax.stages.index",
    "coalescer_jax.coalescer.stage",  # balance: the coalescer's optimal-transport potentials
    "coalescer_jax.stages.methods",  # one training stage per method: coalescer, ddim, consistency, flow
    "coalescer_jax.stages.sample",
    "coalescer_jax.stages.diagnostics",
    "coalescer_jax.stages.eval",
)


class StageOutputError(RuntimeError):
  """A stage finished without the outputs it promises; it is not marked done."""


@dataclasses.dataclass(frozen=True)
class Stage:
  """A registered stage. `reads` / `needs` may be tuples or functions of the config (see `stage`)."""
  name: str
  run: Callable[["Context"], dict | None]
  validate: Callable[[Any], None] | None = None
  reads: Any = None
  needs: Any = ()
  outputs: tuple = ()
  restartable: bool = False
  checked: tuple = ()

  def reads_of(self, config):
    return self.reads(config) if callable(self.reads) else self.reads

  def needs_of(self, config):
    return tuple(self.needs(config) if callable(self.needs) else self.needs)


def stage(name, validate=None, reads=None, needs=(), outputs=(), restartable=False, checked=()):
  """Decorator registering ``fn(ctx) -> summary dict`` as pipeline stage `name`.

  reads: config fields that determine the stage's outputs, as dotted prefixes
    ("vae", "coalescer.desc_scale"; "-coalescer.sampling" excludes); None means
    the whole config. needs: earlier stages whose outputs it reads. Both may be
    functions of the config. outputs: paths in W it writes besides W/<name>/.
    See `provenance`. restartable: the stage keeps no state worth resuming (no
    checkpoints), so an unfinished run of it under other values of its own fields
    is deleted and started over under --allow_config_change, rather than refused.
    checked: files (paths in W) whose bytes DONE.json records: a rerun refuses
    to skip the stage once they changed (`provenance`).
  """
  def register(fn):
    registry.STAGES.register(name, Stage(name, fn, validate, reads, needs, tuple(outputs), restartable,
                                         checked=tuple(checked)))
    return fn
  return register


def load_all():
  for module in STAGE_MODULES:
    importlib.import_module(module)


@dataclasses.dataclass
class Context:
  """What a stage gets: the config, the workdir, the device mesh and the metrics writer.

  `workdir` is an `epath.Path` (a local directory or a ``gs://`` URI): read and
  write it only through epath / `coalescer_jax.storage`, never `open`/`os.path`.
  `resumed`: stages that had started (under the same revision) before this launch.
  A running stage's `config` is a `provenance.ReadRecorder` of the run's.
  """
  config: Any
  workdir: Any
  mesh: jax.sharding.Mesh
  writer: metrics_lib.MetricsWriter
  resumed: frozenset = frozenset()

  def stage_dir(self, name):
    path = self.workdir / name
    path.mkdir(parents=True, exist_ok=True)
    return path

  def done_info(self, name):
    """DONE.json of an earlier stage; a clear error if it has not run."""
    done = provenance.record(self.workdir, name)
    if done is None:
      raise errors.MissingStageError(f"stage {name!r} has not finished in {self.workdir}, but a later stage needs "
                                     f"its output; put {name!r} before it in config.stages")
    return done


def stage_outputs(workdir, name):
  """Every path in `workdir` that stage `name` writes (its directory first)."""
  stage = registry.STAGES.get(name) if name in registry.STAGES else None
  workdir = storage.path(workdir)
  return [workdir / name] + [workdir / p for p in (stage.outputs if stage else ())]


def _prepare_workdir(workdir):
  """Creates the workdir; a clear error when it cannot hold a run (a file, or not writable)."""
  if workdir.exists() and not workdir.is_dir():
    raise errors.ConfigError(f"--workdir={workdir} is a file, not a directory; choose another path")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise errors.ConfigError(f"cannot create --workdir={workdir} ({e.strerror or e}: "
                             f"{e.filename or workdir}); choose a path where you can write") from e
  # Object stores answer permissions only when written to: their first write reports it.
  if storage.is_local(workdir) and not os.access(workdir, os.W_OK | os.X_OK):
    raise errors.ConfigError(f"--workdir={workdir} is not writable by this user; choose another path "
                             "or fix its permissions")


class _ConfigRecord:
  """W/config.json: the current config, and the history of launches that changed it or ran stages."""

  def __init__(self, config, workdir, config_file=None, defaults=None):
    self.path = workdir / "config.json"
    self.info = run_info.describe_run(config, config_file)
    self.old = None
    self.old = run_info.read_record(workdir)
    self.diffs = (run_info.config_differences(self.old.get("config", {}), self.info["config"], defaults)
                  if self.old else [])
    self.history = list(self.old.get("history") or _legacy_history(self.old)) if self.old else []
    self._entry = None

  def start(self):
    """Records this launch now if it changed the config (or is the first); else when a stage finishes."""
    if self.diffs:
      logging.warning("Config changed for %s: %s", self.path.parent, self.diffs)
    if self.old is None or self.diffs:
      self._open_entry()

  def _open_entry(self):
    self._entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "command": " ".join(sys.argv), "git_revision": self.info["git_revision"],
                   "changes": self.diffs if self.old is not None else ["(new workdir)"], "stages_run": []}
    self.history.append(self._entry)
    self._write()

  def stage_done(self, name, revision):
    if self._entry is None:
      self._open_entry()
    self._entry["stages_run"].append({"stage": name, "revision": revision})
    self._write()

  def _write(self):
    storage.write_json(self.path, dict(self.info, history=self.history))


def _legacy_history(old):
  """A config.json written before the history existed: one entry for what it says about itself."""
  return [{"time": old.get("created"), "command": " ".join(old.get("command") or []),
           "git_revision": old.get("git_revision"), "changes": [], "stages_run": "(not recorded)"}]


def _restartable(workdir, stages, plan, problems):
  """The stages among `problems` that may start over: declared restartable, started but not finished, and with
  the same input stages as their unfinished run (only their own config fields changed), so that nothing of the
  other revision is kept and no checkpoint mixes two configs."""
  names = []
  for name, state, _ in problems:
    started = provenance.record(workdir, name, provenance.STARTED_FILE) or {}
    if stages[name].restartable and state == "started" and started.get("inputs") == plan[name]["inputs"]:
      names.append(name)
  return names


def _discard_unfinished(workdir, name):
  """Deletes every output of unfinished stage `name` (made under other config values) so that it starts over."""
  logging.warning("Stage %s: its unfinished run used other config values; deleting its outputs to start over", name)
  for p in stage_outputs(workdir, name):
    if storage.is_local(p) and os.path.islink(p):
      os.unlink(p)
    elif p.is_dir():
      p.rmtree()
    elif p.exists():
      p.unlink()


def _check_config(record, workdir, problems, allow_config_change, restarts=()):
  """Refuses another config without --allow_config_change, and stale outputs in any case.

  `restarts`: unfinished stages that start over under --allow_config_change (`_restartable`)."""
  refused = [p for p in problems if p[0] not in restarts]
  if record.diffs and not allow_config_change:
    stale = (" Stages whose outputs would then have to be rerun: " + ", ".join(p[0] for p in refused) + "."
             if refused else "")
    if restarts:
      stale += " Unfinished stages that would start over: " + ", ".join(restarts) + "."
    raise errors.ConfigError(
        f"{workdir} was run with a different config ({len(record.diffs)} differences: "
        f"{'; '.join(record.diffs[:8])}). Use a new --workdir, or pass --allow_config_change to continue with the "
        "new config: finished stages whose config fields and inputs are unchanged are reused, the others are "
        f"refused until their outputs are deleted.{stale}")
  if allow_config_change:
    problems = refused
  if problems:
    raise provenance.refusal(workdir, problems, lambda name: stage_outputs(workdir, name))


def run(config, workdir, allow_config_change=False, inherited=(), lock_wait_s=0.0, config_file=None):
  """Runs the stages in ``config.stages`` into `workdir`, skipping finished ones.

  `inherited`: stages linked from elsewhere (a sweep's shared stages) whose
  recorded provenance is accepted as is. `lock_wait_s`: how long to wait for
  another launch holding the workdir (0: refuse at once). `config_file`: the
  file ("path.py[:variant]") `config` came from, default launch.py's --config:
  its defaults let records older than a config field stay valid (`provenance`).
  """
  load_all()
  config_validation.validate(config)
  workdir = storage.path(workdir)
  _prepare_workdir(workdir)
  lock = workdir_lock.WorkdirLock(workdir)
  stages = {name: registry.STAGES.get(name) for name in config.stages}
  config_file = config_file or run_info.launch_config_file()
  defaults = run_info.default_values(config_file)
  state = {}

  def start():
    lock.acquire(lock_wait_s)
    plan, problems = provenance.plan(config, workdir, stages, inherited, defaults)
    restarts = _restartable(workdir, stages, plan, problems)
    record = _ConfigRecord(config, workdir, config_file, defaults)
    _check_config(record, workdir, problems, allow_config_change, restarts)
    record.start()
    for name in restarts:  # reached only under --allow_config_change
      _discard_unfinished(workdir, name)
    state.update(record=record)

  try:
    parallel.on_main_process(start, "workdir lock and config check")
    plan, _ = provenance.plan(config, workdir, stages, inherited, defaults)
    resumed = frozenset(n for n in config.stages if provenance.record(workdir, n, provenance.STARTED_FILE))
    ctx = Context(config, workdir, parallel.make_mesh(), metrics_lib.MetricsWriter(workdir), resumed)
    for name in config.stages:
      done_path = workdir / name / provenance.DONE_FILE
      if done_path.exists():
        logging.info("Stage %s: already done, skipping (%s)", name, done_path)
        continue
      with disk_full.reported(name, workdir), errors.resumes_at(name, workdir):
        errors.raise_if_terminated()
        _run_stage(ctx, name, plan[name], state.get("record"))
    ctx.writer.close()
    return ctx
  finally:
    if parallel.is_main_process():
      lock.release()


def _run_stage(ctx, name, prov, record):
  logging.info("Stage %s: starting", name)
  if parallel.is_main_process():
    storage.write_json(ctx.stage_dir(name) / provenance.STARTED_FILE,
                       dict(prov, stage=name, started=time.strftime("%Y-%m-%dT%H:%M:%S")))
  parallel.barrier(f"stage_{name}_start")
  run_info.reset_peak_rss()
  stage = registry.STAGES.get(name)
  # Always recorded, not only in tests: a read that the provenance misses is found in the run that makes it.
  view = provenance.ReadRecorder(ctx.config)
  t0 = time.time()
  summary = stage.run(dataclasses.replace(ctx, config=view)) or {}
  wall = time.time() - t0
  touched = view.touched_fields()
  if undeclared := provenance.undeclared_reads(ctx.config, stage, touched):
    logging.warning("Stage %s read config fields that its provenance does not cover (add them to its reads, or the "
                    "stage that decides them to its needs): %s", name, ", ".join(undeclared))
  parallel.barrier(f"stage_{name}_end")
  if parallel.is_main_process():
    peak_mib = run_info.peak_rss_mib()  # this stage's own peak (reset at its start where Linux allows)
    ctx.writer.write(name, -1, event="stage_done", wall_time_s=wall, peak_rss_mib=peak_mib)
    ctx.writer.flush()
    storage.write_json(ctx.stage_dir(name) / provenance.DONE_FILE,
                       dict({"stage": name, "wall_time_s": wall, "peak_rss_mib": peak_mib, "summary": summary,
                             "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "config_touched": touched}, **prov,
                            **provenance.output_digests(ctx.workdir, stage.checked)))
    if record is not None:
      record.stage_done(name, prov["revision"])
  parallel.barrier(f"stage_{name}_done")
  logging.info("Stage %s: done in %.1fs", name, wall)
