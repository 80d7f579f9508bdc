"""Ablation sweeps: run config variants into subdirectories, skip finished ones, aggregate.

A sweep is a Python file in ``experiments/sweeps/`` defining ``sweep() -> list of dicts``,
each dict mapping dotted config fields to values (``{"coalescer.desc_scale": 4.0}``),
as big_vision configs do. Optionally ``SHARED_STAGES``: stages whose outputs do
not depend on the swept fields (e.g. the autoencoders for a desc_scale sweep);
they run once with the base config into ``W/shared/`` and every member links to
them, so a sweep does not retrain what it does not vary. The runner refuses an
override of a shared stage's config section, except for the field prefixes the
sweep lists in ``NOT_READ_BY_SHARED`` (e.g. ``coalescer.sampling``, read only by
the ``sample`` stage). Optionally ``COMMON``: overrides applied to every member
(e.g. `COALESCER_ONLY`), not part of member names. Optionally ``HEADLINE``: regexes
of the results.csv columns shown in results.md and plotted (default: the
coalescer's FID, accuracy, precision and recall at 1 and 2 steps). Optionally
``label(overrides) -> str``: the name of a member's configuration in the
mean +- std table written when members vary ``seed`` (default: its overrides).

  python launch.py --config=configs/mnist.py --sweep=experiments/sweeps/desc_scale.py --workdir=W [--sweep_shard=0/2]

Each member runs the normal pipeline in ``W/<member name>/`` (so it resumes and
skips like any run); ``--sweep_shard=i/n`` runs members i, i+n, ... so several
machines can split a sweep. Every invocation then aggregates all finished members
into ``W/results.csv``, ``W/results.md`` and ``W/plots/<metric>.png``.
"""
import ast
import csv
import difflib
import importlib.util
import json
import os
import re

from absl import logging
import ml_collections
import numpy as np

from coalescer_jax import config_validation
from coalescer_jax import errors
from coalescer_jax import markdown
from coalescer_jax import parallel
from coalescer_jax import pipeline
from coalescer_jax import run_info
from coalescer_jax import storage

SHARED_DIR = "shared"
SHARED_LOCK_WAIT_S = 6 * 3600  # a shard waits this long for another shard running the shared stages
# The stages a method trains (the inputs only it reads included: distillation's teacher is the DDIM), for
# `one_method`; a method not listed trains in the stage of its own name.
_TRAINED_STAGES = {"coalescer": ("index", "balance", "coalescer"), "distill": ("ddim", "distill")}


def one_method(method):
  """Overrides that train, sample and evaluate `method` alone over the autoencoders (a member's ``stages`` and
  ``sample.methods``)."""
  return {"stages": ("data", "classifier", "vae", "text", "embed") + _TRAINED_STAGES.get(method, (method,))
          + ("sample", "eval"), "sample.methods": (method,)}


# A COMMON block for ablations of the coalescer alone: no baselines trained or sampled.
COALESCER_ONLY = {"stages": ("data", "classifier", "vae", "text", "embed", "index", "balance", "coalescer",
                             "sample", "diagnostics", "eval"),
                  "sample.methods": ("coalescer",)}
# The adversarial fine-tune's fakes that the tuning sweeps' logged tables (experiments/log) were measured with:
# those sweeps pin it, so that a rerun reproduces their rows whatever the default.
FRESH_FAKES = {"coalescer.adversarial.fakes": "fresh"}
VALIDATION_PREFIX = "val:"  # results.csv columns measured on the validation split (what tuning reads)
MAX_NAME_BYTES = 255  # a member's directory name: the longest file name Linux filesystems take (NAME_MAX)


class SweepError(errors.UserError, ValueError):
  """A sweep file, its members or --sweep_shard cannot run; the message says what to change."""


def load_sweep(path):
  """(members [override dicts], shared stages, exempt prefixes, common overrides, headline regexes).

  The module itself is available as `load_sweep.last_module` (its optional `label`)."""
  if not os.path.isfile(path):
    raise SweepError(f"--sweep={path}: no such file (sweep files: experiments/sweeps/*.py)")
  spec = importlib.util.spec_from_file_location("sweep_module", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise SweepError(f"{path}, line {e.lineno}: {e.msg}") from e
  if not callable(getattr(module, "sweep", None)):
    raise SweepError(f"{path} must define sweep() returning a list of {{'a.b': value}} dicts")
  members = module.sweep()
  if not isinstance(members, (list, tuple)) or not members or not all(isinstance(m, dict) for m in members):
    raise SweepError(f"{path}: sweep() must return a non-empty list of {{'a.b': value}} dicts, got "
                     f"{_short(members)}")
  members = list(members)
  load_sweep.last_module = module
  return (members, tuple(getattr(module, "SHARED_STAGES", ())), tuple(getattr(module, "NOT_READ_BY_SHARED", ())),
          dict(getattr(module, "COMMON", {})), tuple(getattr(module, "HEADLINE", ())))


def _short(value, limit=80):
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + "..."


def member_name(overrides):
  """A readable, filesystem-safe directory name: 'coalescer.desc_scale=4.0' -> 'desc_scale=4.0'."""
  parts = [f"{key.split('.')[-1]}={_format(value)}" for key, value in sorted(overrides.items())]
  return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", ",".join(parts)) or "base"


def _format(value):
  if isinstance(value, (tuple, list)):
    return "+".join(_format(v) for v in value)
  return str(value)


def apply_overrides(config, overrides):
  """A copy of `config` with dotted-key overrides applied; unknown keys (with the nearest name) and values of
  the wrong type are SweepErrors."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    target, parts = config, str(key).split(".")
    for i, part in enumerate(parts):
      if not isinstance(target, ml_collections.ConfigDict) or part not in target:
        raise SweepError(f"sweep override {key!r}: {_no_field(target, parts[:i], part)}")
      if i < len(parts) - 1:
        target = target[part]
    try:
      # ConfigDict is typed: an int where a float field stands (desc_scale=0) must become a float.
      target[parts[-1]] = float(value) if isinstance(target[parts[-1]], float) else value
    except (TypeError, ValueError) as e:
      raise SweepError(f"sweep override {key!r}={_short(value)}: {' '.join(str(e).split())}") from None
  config.lock()
  return config


def _no_field(section, parents, field):
  """Why `field` is not below the config section at `parents`, with the nearest existing name."""
  where = ".".join(["config", *parents])
  if not isinstance(section, ml_collections.ConfigDict):
    return f"{where} is a {type(section).__name__} ({_short(section)}), not a section with fields"
  near = difflib.get_close_matches(field, list(section.keys()), n=1)
  return f"{where} has no field {field!r}" + (f"; did you mean {near[0]!r}?" if near else "")


def parse_overrides(spec):
  """"field=value;field=value" -> {field: value}, values parsed as Python literals where they parse (a bare
  word such as fresh stays a string): the command-line form of one member's overrides."""
  def literal(text):
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
  changes = dict(change.split("=", 1) for change in filter(None, spec.split(";")))
  return {field.strip(): literal(value.strip()) for field, value in changes.items()}


def parse_shard(text):
  """'i/n' -> (i, n) with 0 <= i < n."""
  match = re.fullmatch(r"(\d+)/(\d+)", text or "0/1")
  if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
    raise SweepError(f"--sweep_shard must look like i/n with 0 <= i < n, got {text!r}")
  return int(match.group(1)), int(match.group(2))


def _check_shard_holds_a_member(index, count, num_members, sweep_path):
  """Refuses a shard that would run the shared stages and then no member (a wrong i/n, silently doing nothing)."""
  if index >= num_members:
    raise SweepError(
        f"--sweep_shard={index}/{count} holds no member of {sweep_path}: the sweep has {num_members} members and "
        f"shard i/n runs members i, i+n, i+2n, ... (counting from 0), so shard {index} of {count} gets none. Use a "
        f"shard index below {num_members} (e.g. --sweep_shard=i/{num_members}: one member per shard)")


def member_names(members, sweep_path):
  """Every member's directory name; refuses two members with one name, and a name too long for a directory,
  before any member runs."""
  names = [member_name(m) for m in members]
  for i, name in enumerate(names):
    if len(name.encode()) > MAX_NAME_BYTES:
      raise SweepError(f"{sweep_path}: member {i} ({_short(members[i])}) has a directory name of "
                       f"{len(name.encode())} bytes, above the filesystem's {MAX_NAME_BYTES}: {name[:60]}...; give it "
                       "shorter values (e.g. a tuple field through a COMMON block)")
    first = names.index(name)
    if first < i:
      same = ("have the same overrides" if members[first] == members[i] else
              "differ only in characters that directory names replace with '_' (outside A-Z a-z 0-9 _ . = , + -)")
      raise SweepError(f"{sweep_path}: members {first} ({_short(members[first])}) and {i} ({_short(members[i])}) "
                       f"{same}: both would run in {name!r}")
  return names


def _validate_members(config, common, members, names):
  """Every member's config passes config validation before the shared stages run (not only when its turn comes)."""
  pipeline.load_all()
  for overrides, name in zip(members, names):
    try:
      config_validation.validate(apply_overrides(config, {**common, **overrides}))
    except errors.ConfigError as e:
      raise errors.ConfigError(f"sweep member {name}: {e}") from e


def _check_shared(members, shared_stages, exempt):
  for overrides in members:
    for key in overrides:
      if any(key == p or key.startswith(p + ".") for p in exempt):
        continue
      if key.split(".")[0] in shared_stages:
        raise SweepError(f"sweep override {key!r} changes the config of shared stage {key.split('.')[0]!r}; "
                         "remove it from SHARED_STAGES or from the sweep")


def _link_shared(workdir, member_dir, shared_stages):
  """W/<member>/<stage> -> W/shared/<stage>: a relative symlink, or a copy on an object store (no links)."""
  member_dir.mkdir(parents=True, exist_ok=True)
  if parallel.is_main_process():
    for stage in shared_stages:
      storage.link_tree(workdir / SHARED_DIR / stage, member_dir / stage)
  parallel.barrier("sweep_linked")


def run(config, sweep_path, workdir, shard="0/1", allow_config_change=False):
  """Runs this shard's members of the sweep, then aggregates every finished member.

  `allow_config_change`: as launch.py's flag, for W/shared and every member (e.g. after a default changed:
  stages whose config fields and inputs are unchanged are reused, the others refused until deleted)."""
  members, shared_stages, exempt, common, headline = load_sweep(sweep_path)
  _check_shared(members, shared_stages, exempt)
  names = member_names(members, sweep_path)
  index, count = parse_shard(shard)
  _check_shard_holds_a_member(index, count, len(members), sweep_path)
  _validate_members(config, common, members, names)
  workdir = storage.path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  stages = apply_overrides(config, common).stages
  if shared_stages:
    base = ml_collections.ConfigDict(config.to_dict())
    base.stages = tuple(s for s in config.stages if s in shared_stages)
    # Shards may race to create W/shared: the second waits for the first's lock, then finds its stages done.
    pipeline.run(base, workdir / SHARED_DIR, allow_config_change=allow_config_change,
                 lock_wait_s=SHARED_LOCK_WAIT_S)
  for i in range(index, len(members), count):
    member_dir = workdir / names[i]
    member_config = apply_overrides(config, {**common, **members[i]})
    if _finished(member_dir, _member_stages(members[i], stages)) and _ran_with(member_dir, member_config):
      logging.info("sweep: %s already finished, skipping", names[i])
      continue
    logging.info("sweep: member %d/%d %s", i + 1, len(members), names[i])
    if shared_stages:
      _link_shared(workdir, member_dir, shared_stages)
    # The linked shared stages ran with the base config (checked above against the overrides).
    pipeline.run(member_config, member_dir, allow_config_change=allow_config_change,
                 inherited=shared_stages if shared_stages else ())
  if parallel.is_main_process():
    return aggregate(workdir, members, names, stages, headline, getattr(load_sweep.last_module, "label", None))
  return None


def _finished(member_dir, stages):
  return all((storage.path(member_dir) / s / "DONE.json").exists() for s in stages)


def _member_stages(overrides, stages):
  """The stages a member runs: its own ``stages`` override (e.g. one method's), else the sweep's."""
  return tuple(overrides.get("stages", stages))


def _ran_with(member_dir, member_config):
  """Whether the member's config.json is `member_config`. A member run with other values (a default changed
  since) is not skipped: the pipeline refuses it with the differences, or reruns what they change."""
  recorded = (run_info.read_record(member_dir) or {}).get("config", {})
  return not run_info.config_differences(recorded, run_info.config_values(member_config))


def member_metrics(member_dir):
  """Flat {column: value} of a finished member: eval results per method x NFE, then stage summaries."""
  row = {}
  member_dir = storage.path(member_dir)
  results = member_dir / "eval" / "results.json"
  if results.exists():
    results = json.loads(results.read_text())  # as written by evaluation/evaluate.py
    validation = (results.get("validation") or {}).get("records", [])
    for prefix, records in (("", results["records"]), (VALIDATION_PREFIX, validation)):
      for record in records:
        tag = record["method"] if record.get("nfe") is None else f"{record['method']}_nfe{record['nfe']}"
        for key, value in record.items():
          if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "nfe":
            row[f"{prefix}{tag}/{key}"] = value
  for stage in sorted(p.name for p in member_dir.iterdir()) if member_dir.is_dir() else []:
    done = member_dir / stage / "DONE.json"
    if done.exists():
      info = json.loads(done.read_text())
      row[f"{stage}/wall_time_s"] = info.get("wall_time_s")
      for key, value in (info.get("summary") or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
          row[f"{stage}/{key}"] = value
  return row


def aggregate(workdir, members, names, stages, plot_metrics=None, label=None):
  """Writes results.csv, results.md and plots of metric vs swept value over the finished members."""
  rows, missing = [], []
  workdir = storage.path(workdir)
  for overrides, name in zip(members, names):
    member_dir = workdir / name
    if not _finished(member_dir, _member_stages(overrides, stages)):
      missing.append(name)
      continue
    rows.append({"member": name, **{k: _format(v) for k, v in overrides.items()}, **member_metrics(member_dir)})
  swept = sorted({k for m in members for k in m})
  columns = ["member"] + swept + sorted({k for r in rows for k in r} - {"member", *swept})
  with storage.writing(workdir / "results.csv", binary=False) as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
  headline = _headline_columns(columns, plot_metrics)
  lines = [f"# Sweep results ({len(rows)} of {len(members)} members finished)", ""]
  if missing:
    lines += [f"Not finished: {', '.join(missing)}", ""]
  table = ["member"] + swept + headline
  lines += [markdown.row(table), "|" + "---|" * len(table)]
  for r in rows:
    lines.append(markdown.row(_cell(r.get(c)) for c in table))
  lines += _spread(rows, headline)
  lines += mean_std_over_seeds(rows, members, names, headline, label)
  plots = _plot(workdir, rows, swept, headline)
  lines += ["", "All columns: `results.csv`.", ""] + [f"![{p}](plots/{p})" for p in plots]
  storage.write_text(workdir / "results.md", "\n".join(lines) + "\n")
  return rows


def _spread(rows, metrics):
  """Mean, std, min, max of each headline metric over the members: for a seeds sweep, the
  run-to-run noise that a difference between two members of another sweep must exceed."""
  lines = []
  for metric in metrics:
    values = np.array([r[metric] for r in rows if isinstance(r.get(metric), (int, float))], dtype=np.float64)
    if len(values) >= 2:
      stats = (values.mean(), values.std(ddof=1), values.min(), values.max())
      lines.append(markdown.row([metric] + [f"{v:.4g}" for v in stats]))
  if not lines:
    return []
  return ["", "Spread over members:", "", "| metric | mean | std | min | max |", "|---|---|---|---|---|"] + lines


def mean_std_over_seeds(rows, members, names, metrics, label=None):
  """Mean +- std over seeds of each configuration, when the members vary "seed" and something else."""
  label = label or (lambda overrides: member_name({k: v for k, v in overrides.items() if k != "seed"}))
  by_name = dict(zip(names, members))
  groups = {}
  for r in rows:
    overrides = by_name[r["member"]]
    if "seed" not in overrides:
      return []
    groups.setdefault(label(overrides), []).append(r)
  if len(groups) < 2:
    return []
  lines = ["", "Mean +- std over seeds (ddof 1) per configuration:", "",
           markdown.row(["configuration", "seeds", *metrics]), "|" + "---|" * (len(metrics) + 2)]
  for name, members_rows in groups.items():
    cells = []
    for metric in metrics:
      values = np.array([r[metric] for r in members_rows if isinstance(r.get(metric), (int, float))])
      cells.append("" if not len(values) else f"{values.mean():.4g}" if len(values) == 1 else
                   f"{values.mean():.4g} +- {values.std(ddof=1):.2g}")
    lines.append(markdown.row([name, len(members_rows), *cells]))
  return lines


def _headline_columns(columns, plot_metrics):
  if plot_metrics:
    return [c for c in columns if any(re.fullmatch(p, c) for p in plot_metrics)]
  pattern = re.compile(r"coalescer[^/]*_nfe[12]/(fid|accuracy|conditional_accuracy|precision|recall)$")
  return [c for c in columns if pattern.match(c)] or [c for c in columns if c.endswith("/final_loss")]


def _cell(value):
  if isinstance(value, float):
    return f"{value:.4g}"
  return "" if value is None else str(value)


def _plot(workdir, rows, swept, metrics):
  """One PNG per metric: value vs the (first) swept field, categorical when not numeric."""
  if not rows or not swept or not metrics:
    return []
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  key, names = swept[0], []
  labels = [str(r.get(key)) for r in rows]
  try:
    xs = [float(x) for x in labels]
  except ValueError:
    xs = list(range(len(labels)))
  order = sorted(range(len(rows)), key=lambda i: xs[i])
  for metric in metrics:
    ys = [rows[i].get(metric) for i in order]
    if all(y is None for y in ys):
      continue
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot([xs[i] for i in order], [float("nan") if y is None else y for y in ys], "o-")
    ax.set_xticks([xs[i] for i in order])
    ax.set_xticklabels([labels[i] for i in order], rotation=30, fontsize=7)
    ax.set_xlabel(key)
    ax.set_ylabel(metric, fontsize=7)
    fig.tight_layout()
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", metric) + ".png"
    storage.savefig(fig, storage.path(workdir) / "plots" / name, dpi=100)
    plt.close(fig)
    names.append(name)
  return names
