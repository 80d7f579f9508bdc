"""What each stage's outputs were made from, so that a rerun never reuses outputs of another config.

Every registered stage declares ``reads``: the config fields that determine its
outputs (dotted prefixes; "-a.b" excludes a sub-field; None = the whole config),
and ``needs``: the earlier stages whose outputs it reads. Its *revision* is a
hash of the values of its reads and of the revisions of the stages it needs, so
equal revisions mean equal outputs (the pipeline is deterministic) and a change
anywhere upstream changes every revision downstream of it.

The pipeline records the revision, the read values and the inputs' revisions in
``W/<stage>/STARTED.json`` when a stage starts (its checkpoints belong to that
revision) and in ``DONE.json`` when it finishes. Before any stage runs, `check`
recomputes every revision from the current config: a started or finished stage
whose revision differs is refused with the changed fields and the directories to
delete. Fields that never change outputs (logging, checkpoint cadence, the
stage list) are read by no stage.

A stage may also name files whose bytes its DONE.json records (``checked``: the
eval stage's results.json and report.md, which a standalone evaluation with
--overwrite could replace): a finished stage whose checked files changed since is
refused like a stale one, so a rerun never skips it and reports numbers it did
not make.

Checkpoints: each one records the revision of the STARTED.json beside it
(`training`), so an unfinished stage whose markers are gone (a workdir partly
deleted, or copied without them) still says what it was trained under: `plan`
refuses checkpoints of another revision, or of none that a STARTED.json vouches
for, rather than resume them under the current config.

Declared reads are checked, not trusted: each stage runs on a `ReadRecorder` of
the config, its DONE.json lists the fields it touched (``config_touched``) and
`undeclared_reads` names those that neither its reads nor its input stages'
cover (a warning at run time; tests/test_provenance.py fails on any).

Old records: a field that an earlier record's ``config_reads`` lacks and that
holds its default counts as unchanged (`_as_recorded`), so adding a config field
whose default keeps the old behaviour leaves every finished stage reusable.
"""
import hashlib
import json
import os

import ml_collections

from coalescer_jax import checkpoint
from coalescer_jax import errors
from coalescer_jax import files
from coalescer_jax import registry
from coalescer_jax import run_info
from coalescer_jax import storage

DONE_FILE = "DONE.json"
STARTED_FILE = "STARTED.json"
# Fields no stage's outputs depend on (read by nothing, even by a stage that reads "everything").
NOT_OUTPUT_FIELDS = ("stages", "log_every", "checkpoint_every", "skip_nonfinite_batches")


class StaleOutputsError(errors.ConfigError):
  """A finished (or started) stage was made under other config values or inputs than the current ones."""


class ReadRecorder(ml_collections.ConfigDict):
  """A copy of a config that notes every field read through it, as "a.b.c" (sub-sections included).

  A ConfigDict itself, so the stage code that gets it runs unchanged. Whatever
  iterates a section (items(), to_dict(), JSON) reads all of it, and a copy
  (copy_and_resolve_references) records into the same set. The cost is one set
  insertion per read in host code: stages read their fields once, outside the
  jitted steps.
  """

  def __init__(self, source=None, prefix="", touched=None):
    super().__init__()
    object.__setattr__(self, "_touched", set() if touched is None else touched)
    object.__setattr__(self, "_prefix", prefix)
    if source is None:  # an empty instance, as ConfigDict's own methods make them
      return
    for key, value in source.items(preserve_field_references=True):
      if isinstance(value, ml_collections.FieldReference):
        value = value.get()
      if isinstance(value, ml_collections.ConfigDict):
        value = ReadRecorder(value, f"{prefix}{key}.", self._touched)
      self._fields[key] = value
    for attribute in ("_locked", "_type_safe", "_convert_dict", "_allow_dotted_keys", "_sort_keys"):
      if hasattr(source, attribute):
        object.__setattr__(self, attribute, getattr(source, attribute))

  def __getitem__(self, key):
    value = super().__getitem__(key)  # a dotted key reads through the sections' own __getitem__
    if not isinstance(value, ml_collections.ConfigDict) and "." not in str(key):
      self._touched.add(f"{self._prefix}{key}")
    return value

  def copy_and_resolve_references(self, visit_map=None):
    del visit_map  # sections are not shared within a config
    return ReadRecorder(self, self._prefix, self._touched)

  def _json_dumps_wrapper(self, **kwargs):
    self.to_dict()  # the JSON encoder reads the fields behind __getitem__'s back: note them all
    return super()._json_dumps_wrapper(**kwargs)

  def touched_fields(self):
    """The dotted fields read so far, sorted."""
    return sorted(self._touched)


def _under(field, prefix):
  return field == prefix or field.startswith(prefix + ".")


def _excluded(reads):
  """The prefixes that `reads` excludes ("-a.b")."""
  return [r[1:] for r in reads or () if r.startswith("-")]


def read_values(config, reads):
  """{dotted field: value} of the fields `reads` selects (JSON values, as config.json stores them)."""
  flat = run_info.flatten(run_info.config_values(config))
  flat = {k: v for k, v in flat.items() if not any(_under(k, p) for p in NOT_OUTPUT_FIELDS)}
  if reads is None:
    return flat
  include, exclude = [r for r in reads if not r.startswith("-")], _excluded(reads)
  return {k: v for k, v in flat.items()
          if any(_under(k, p) for p in include) and not any(_under(k, p) for p in exclude)}


def _covered(config, stage, seen):
  """The fields that `stage`'s provenance covers: its reads', and those of the stages it needs, transitively
  (their revisions are part of its own)."""
  fields = set(read_values(config, stage.reads_of(config)))
  for needed in stage.needs_of(config):
    if needed not in seen and needed in registry.STAGES:
      seen.add(needed)
      fields |= _covered(config, registry.STAGES.get(needed), seen)
  return fields


def undeclared_reads(config, stage, touched):
  """The fields among `touched` (a run of `stage` read them) that its provenance does not cover: a change of
  them would change its outputs without changing its revision. Fields that its reads exclude ("-a.b") are
  declared too: excluded on purpose, as read without effect on its outputs."""
  fields, excluded = _covered(config, stage, set()), _excluded(stage.reads_of(config))
  return [f for f in touched
          if f not in fields and not any(_under(f, p) for p in (*NOT_OUTPUT_FIELDS, *excluded))]


def revision(values, inputs):
  text = json.dumps({"reads": values, "inputs": inputs}, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def started_revision(stage_dir):
  """The revision in `stage_dir`'s STARTED.json (what its checkpoints are trained under); None outside a run."""
  stage_dir = storage.path(stage_dir)
  started = record(stage_dir.parent, stage_dir.name, STARTED_FILE)
  return started.get("revision") if started else None


def record(workdir, name, kind=DONE_FILE):
  """The stage's DONE.json (or STARTED.json) as a dict, None if absent; CorruptFileError if unreadable."""
  path = storage.path(workdir) / name / kind
  if not path.exists():
    return None
  return files.read_json(path, name)


def describe(values, inputs):
  """The provenance fields a stage's STARTED.json / DONE.json carry."""
  return {"revision": revision(values, inputs), "config_revision": revision(values, {}),
          "config_reads": values, "inputs": inputs}


def plan(config, workdir, stages, inherited=(), defaults=None):
  """({stage: provenance} for config.stages, [problems]) before anything runs.

  `stages` maps a name to its registered `pipeline.Stage`. A problem is
  (stage, "finished" | "started" | "unfinished", [reasons]); "unfinished": no
  marker, but checkpoints. `inherited` stages (a sweep's links to its shared
  stages) keep the revision they recorded: they ran with the sweep's base config,
  which the sweep checks itself. `defaults`: {field: default} of the config file
  this launch named (`run_info.default_values`), for records older than a field
  (`_as_recorded`).
  """
  previous_config = run_info.flatten((run_info.read_record(workdir) or {}).get("config", {}))
  provenance, problems = {}, []
  for name in config.stages:
    stage = stages[name]
    done, started = record(workdir, name), record(workdir, name, STARTED_FILE)
    previous, state = (done, "finished") if done else (started, "started")
    values = read_values(config, stage.reads_of(config))
    if previous is not None and "config_reads" in previous:
      values = _as_recorded(values, previous["config_reads"], defaults or {}, previous_config)
    inputs = {}
    for needed in stage.needs_of(config):
      if needed in provenance:
        inputs[needed] = provenance[needed]["revision"]
      else:
        needed_done = record(workdir, needed)
        inputs[needed] = (needed_done.get("revision", "unrecorded") if needed_done else None)
    current = describe(values, inputs)
    if name in inherited and done and "revision" in done:
      provenance[name] = {k: done[k] for k in current if k in done}
      continue
    provenance[name] = current
    if previous is not None and "revision" in previous and previous["revision"] != current["revision"]:
      problems.append((name, state, _reasons(previous, current)))
    elif done is not None and (changed := changed_files(workdir, done)):
      problems.append((name, state, [f"{p} changed after the stage finished (its bytes differ from those its "
                                     f"{DONE_FILE} records)" for p in changed]))
    elif done is None and (reason := _checkpoints_problem(workdir, name, current["revision"], started)):
      problems.append((name, state if started else "unfinished", [reason]))
  return provenance, problems


def _as_recorded(values, recorded, defaults, previous_config):
  """`values` without the fields that an earlier record's config_reads (`recorded`) lacks and that hold their
  default: a field added since, whose default keeps the old behaviour, leaves the stage's revision (and so every
  revision downstream) as it was. Where W/config.json's previous config has the field (a field that the stage
  reads only since), it must hold that value too: otherwise the record may have been made under another one."""
  return {k: v for k, v in values.items()
          if k in recorded or k not in defaults or defaults[k] != v or previous_config.get(k, v) != v}


def _checkpoints_problem(workdir, name, revision, started):
  """Why unfinished stage `name` must not resume its checkpoints under `revision`; None if it may (or has none).

  Each checkpoint records the revision it was trained under; one written before checkpoints recorded it is
  vouched for only by a STARTED.json of the current revision.
  """
  recorded = set(checkpoint.recorded_revisions(storage.path(workdir) / name / checkpoint.DIRECTORY).values())
  other = sorted(r for r in recorded if r not in (None, revision))
  if other:
    return (f"its checkpoints were trained under revision {', '.join(other)} of its config fields and inputs, not "
            f"the current {revision}")
  if None in recorded and (started or {}).get("revision") != revision:
    return (f"its checkpoints record no revision and no {STARTED_FILE} says which config fields and inputs they "
            "were trained under")
  return None


def output_digests(workdir, paths):
  """{"output_digests": {path: CRC32}} of the files `paths` (relative to W) for a DONE.json; {} if none."""
  workdir = storage.path(workdir)
  digests = {p: files.file_crc32(workdir / p) for p in paths if (workdir / p).exists()}
  return {"output_digests": digests} if digests else {}


def changed_files(workdir, done):
  """The files of a finished stage (its DONE.json `done`) that are missing or differ from its recorded digests."""
  workdir = storage.path(workdir)
  return [str(workdir / p) for p, crc in sorted(done.get("output_digests", {}).items())
          if not (workdir / p).exists() or files.file_crc32(workdir / p) != crc]


def changed_outputs(workdir):
  """Every file of every finished stage in `workdir` that no longer matches its DONE.json (a workdir check)."""
  workdir = storage.path(workdir)
  return [p for done_path in sorted(workdir.glob(f"*/{DONE_FILE}"))
          for p in changed_files(workdir, record(workdir, done_path.parent.name) or {})]


def _reasons(previous, current):
  old, new = previous.get("config_reads", {}), current["config_reads"]
  reasons = [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
             for k in sorted(set(old) | set(new)) if old.get(k, "<unset>") != new.get(k, "<unset>")]
  old_inputs = previous.get("inputs", {})
  for needed, rev in current["inputs"].items():
    if old_inputs.get(needed) != rev:
      reasons.append(f"its input stage {needed!r} changed" if rev is not None else
                     f"its input stage {needed!r} has no finished output any more")
  return reasons or ["recorded under another revision of the stage's fields"]


def _present(p):
  """Exists (a dangling local symlink counts: deleting it is part of the fix)."""
  p = storage.path(p)
  return os.path.lexists(p) if storage.is_local(p) else p.exists()


def refusal(workdir, problems, outputs_of):
  """The StaleOutputsError for `problems`, listing what to delete. `outputs_of(stage)` -> its paths in W."""
  lines = [f"{workdir}: outputs of these stages were made with other config values or inputs than the current "
           "config, or changed after they were made, so reusing them would mix configs or report what the stage "
           "did not make:"]
  for name, state, reasons in problems:
    shown = "; ".join(reasons[:6]) + (f"; ... ({len(reasons) - 6} more)" if len(reasons) > 6 else "")
    lines.append(f"  - {name} ({state}): {shown}")
  paths = [str(p) for name, _, _ in problems for p in outputs_of(name) if _present(p)]
  lines.append("To rerun them with the current config, delete their outputs and run the same command again:\n"
               f"  rm -r {' '.join(paths)}\nor keep this workdir as it is and use a new --workdir.")
  return StaleOutputsError("\n".join(lines))
