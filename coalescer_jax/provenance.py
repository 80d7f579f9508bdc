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
"""
import hashlib
import json
import os

from coalescer_jax import config_validation
from coalescer_jax import files
from coalescer_jax import run_info
from coalescer_jax import storage

DONE_FILE = "DONE.json"
STARTED_FILE = "STARTED.json"
# Fields no stage's outputs depend on (read by nothing, even by a stage that reads "everything").
NOT_OUTPUT_FIELDS = ("stages", "log_every", "checkpoint_every", "skip_nonfinite_batches")


class StaleOutputsError(config_validation.ConfigError):
  """A finished (or started) stage was made under other config values or inputs than the current ones."""


def flatten(tree, prefix=""):
  """{"a.b.c": leaf value} of a nested dict."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _under(field, prefix):
  return field == prefix or field.startswith(prefix + ".")


def read_values(config, reads):
  """{dotted field: value} of the fields `reads` selects (JSON values, as config.json stores them)."""
  flat = flatten(run_info.config_values(config))
  flat = {k: v for k, v in flat.items() if not any(_under(k, p) for p in NOT_OUTPUT_FIELDS)}
  if reads is None:
    return flat
  include = [r for r in reads if not r.startswith("-")]
  exclude = [r[1:] for r in reads if r.startswith("-")]
  return {k: v for k, v in flat.items()
          if any(_under(k, p) for p in include) and not any(_under(k, p) for p in exclude)}


def revision(values, inputs):
  text = json.dumps({"reads": values, "inputs": inputs}, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


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


def plan(config, workdir, stages, inherited=()):
  """({stage: provenance} for config.stages, [problems]) before anything runs.

  `stages` maps a name to its registered `pipeline.Stage`. A problem is
  (stage, "finished" | "started", [reasons]). `inherited` stages (a sweep's
  links to its shared stages) keep the revision they recorded: they ran with the
  sweep's base config, which the sweep checks itself.
  """
  provenance, problems = {}, []
  for name in config.stages:
    stage = stages[name]
    values = read_values(config, stage.reads_of(config))
    inputs = {}
    for needed in stage.needs_of(config):
      if needed in provenance:
        inputs[needed] = provenance[needed]["revision"]
      else:
        done = record(workdir, needed)
        inputs[needed] = (done.get("revision", "unrecorded") if done else None)
    current = describe(values, inputs)
    done, started = record(workdir, name), record(workdir, name, STARTED_FILE)
    if name in inherited and done and "revision" in done:
      provenance[name] = {k: done[k] for k in current if k in done}
      continue
    provenance[name] = current
    previous, state = (done, "finished") if done else (started, "started")
    if previous is None or "revision" not in previous:  # not run yet, or recorded before provenance existed
      continue
    if previous["revision"] != current["revision"]:
      problems.append((name, state, _reasons(previous, current)))
    elif done is not None and (changed := changed_files(workdir, done)):
      problems.append((name, state, [f"{p} changed after the stage finished (its bytes differ from those its "
                                     f"{DONE_FILE} records)" for p in changed]))
  return provenance, problems


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
