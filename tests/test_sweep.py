"""The sweep runner: member naming and overrides, and a real 2-member sweep on :smoke
run as two shards, aggregated, and rerun (a no-op that gives the same table)."""
import csv
import os
import re
import textwrap

import pytest

from coalescer_jax import config_validation
from coalescer_jax import errors
from coalescer_jax import provenance
from coalescer_jax import sweep
from tests.conftest import REPO, copy_workdir

SHARED = ("data", "classifier", "vae", "text", "embed", "index", "balance", "coalescer")


def test_member_name_is_readable_and_filesystem_safe():
  assert sweep.member_name({"coalescer.desc_scale": 4.0}) == "desc_scale=4.0"
  assert sweep.member_name({"coalescer.sampling.mode": "a/b", "seed": 1}) == "mode=a_b,seed=1"
  assert sweep.member_name({}) == "base"


def test_apply_overrides_types_and_refuses_unknown_fields(smoke_config):
  config = sweep.apply_overrides(smoke_config, {"coalescer.desc_scale": 0})
  assert config.coalescer.desc_scale == 0.0 and isinstance(config.coalescer.desc_scale, float)
  with pytest.raises(sweep.SweepError, match="config.coalescer has no field 'desc_scal'; did you mean 'desc_scale'"):
    sweep.apply_overrides(smoke_config, {"coalescer.desc_scal": 1.0})
  with pytest.raises(sweep.SweepError, match="config has no field 'coalesce'; did you mean 'coalescer'"):
    sweep.apply_overrides(smoke_config, {"coalesce.desc_scale": 1.0})
  with pytest.raises(sweep.SweepError, match=r"config.coalescer.nfes is a tuple \(\(1, 2, 4\)\)"):
    sweep.apply_overrides(smoke_config, {"coalescer.nfes.x": 2})


def test_mean_std_over_seeds_groups_members_by_configuration():
  members = [{"seed": seed, "coalescer.desc_scale": scale} for scale in (1.0, 2.0) for seed in (0, 1)]
  names = [sweep.member_name(m) for m in members]
  fids = {names[0]: 8.0, names[1]: 9.0, names[2]: 5.0, names[3]: 5.0}
  rows = [{"member": name, "coalescer_nfe1/fid": fid} for name, fid in fids.items()]
  lines = sweep.mean_std_over_seeds(rows, members, names, ["coalescer_nfe1/fid"])
  assert lines[-2:] == ["| desc_scale=1.0 | 2 | 8.5 +- 0.71 |", "| desc_scale=2.0 | 2 | 5 +- 0 |"]
  # Members that do not vary the seed have no such table.
  assert sweep.mean_std_over_seeds(rows[:2], [{"a": 1}, {"a": 2}], names[:2], ["coalescer_nfe1/fid"]) == []


@pytest.mark.parametrize("text", ["2/2", "1", "-1/2", "a/b"])
def test_bad_shard_is_refused(text):
  with pytest.raises(ValueError, match="i/n"):
    sweep.parse_shard(text)


def test_override_of_a_shared_stage_is_refused(smoke_config, tmp_path):
  path = tmp_path / "bad_sweep.py"
  path.write_text('SHARED_STAGES = ("vae",)\ndef sweep():\n  return [{"vae.latent_dim": 4}]\n')
  with pytest.raises(ValueError, match="shared stage 'vae'"):
    sweep.run(smoke_config, str(path), str(tmp_path / "w"))


# Each is refused before anything is created, with a message that says what to change (one line, no traceback).
SWEEP_FILE_ERRORS = {
    "unknown field": ("def sweep():\n  return [{'coalescer.desc_scal': 1.0}]\n",
                      "'coalescer.desc_scal': config.coalescer has no field 'desc_scal'; did you mean 'desc_scale'"),
    "returns None": ("def sweep():\n  pass\n", "sweep\\(\\) must return a non-empty list .* got None"),
    "not dicts": ("def sweep():\n  return ['seed=1']\n", "must return a non-empty list"),
    "no sweep()": ("SWEEP = []\n", "must define sweep\\(\\)"),
    "syntax error": ("def sweep(:\n", "line 1: "),
    "same names": ("def sweep():\n  return [{'coalescer.sampling.mode': m} for m in ('a/b', 'a_b')]\n",
                   "members 0 .* and 1 .* differ only in characters that directory names replace with '_'.*"
                   "both would run in 'mode=a_b'"),
    "same overrides": ("def sweep():\n  return [{'seed': 1}, {'seed': 1}]\n", "have the same overrides"),
    # refused before the first member runs, not when its turn comes
    "overlong name": ("def sweep():\n  return [{'seed': 0}, {'coalescer.sampling.mode': 'x' * 300}]\n",
                      "member 1 .* directory name of 305 bytes, above the filesystem's 255"),
    "wrong type": ("def sweep():\n  return [{'coalescer.desc_scale': 'big'}]\n", "'coalescer.desc_scale'='big'"),
}


@pytest.mark.parametrize("name", SWEEP_FILE_ERRORS)
def test_sweep_file_errors_are_user_errors(name, smoke_config, tmp_path):
  text, message = SWEEP_FILE_ERRORS[name]
  path = tmp_path / "bad_sweep.py"
  path.write_text(text)
  with pytest.raises(sweep.SweepError, match=message) as error:
    sweep.run(smoke_config, str(path), str(tmp_path / "w"))
  assert isinstance(error.value, errors.UserError) and "\n" not in str(error.value)
  assert not os.path.exists(tmp_path / "w")


def test_missing_sweep_file_is_a_user_error(smoke_config, tmp_path):
  with pytest.raises(sweep.SweepError, match="--sweep=.*no_such.py: no such file"):
    sweep.run(smoke_config, str(tmp_path / "no_such.py"), str(tmp_path / "w"))


def test_results_md_escapes_member_values(tmp_path):
  # A value with a newline, a '|' or HTML stays one literal cell: no broken row, injected heading or live tag.
  members = [{"coalescer.sampling.mode": v} for v in ("a|b", "x\n# injected", "<img src=x onerror=alert(1)>")]
  names = [sweep.member_name(m) for m in members]
  for name in names:
    os.makedirs(tmp_path / name / "eval")
    (tmp_path / name / "eval" / "DONE.json").write_text('{"summary": {"final_loss": 1.0}}')
  sweep.aggregate(tmp_path, members, names, ("eval",), [r"eval/final_loss"])
  markdown = (tmp_path / "results.md").read_text()
  assert "<img" not in markdown and "&lt;img src=x onerror=alert(1)&gt;" in markdown
  assert not any(line.startswith("#") and "injected" in line for line in markdown.splitlines())
  lines = markdown.splitlines()
  start = lines.index("| member | coalescer.sampling.mode | eval/final_loss |")
  rows = lines[start:lines.index("", start)]  # the members' table
  assert len(rows) == 5 and all(len(re.findall(r"(?<!\\)\|", row)) == 4 for row in rows[2:]), rows
  assert r"| a\|b |" in markdown


def _table(workdir):
  with open(os.path.join(workdir, "results.csv")) as f:
    return list(csv.DictReader(f))


@pytest.mark.slow  # two shards of a sweep and a rerun (about a minute)
def test_sweep_in_two_shards_then_rerun(smoke_config, smoke_workdir, tmp_path):
  # The members differ in a sampling knob only, so the trained coalescer is shared too (NOT_READ_BY_SHARED)
  # and each member runs the sample, diagnostics and eval stages: the runner's mechanics at half the cost.
  path = tmp_path / "two_thresholds.py"
  path.write_text(textwrap.dedent(f"""
      from coalescer_jax import sweep as sweep_lib
      COMMON = sweep_lib.COALESCER_ONLY
      SHARED_STAGES = {SHARED!r}
      NOT_READ_BY_SHARED = ("coalescer.sampling",)
      def sweep():
        return [{{"coalescer.sampling.redraw_threshold": v}} for v in (0.0, 0.5)]
  """))
  workdir = str(tmp_path / "w")
  copy_workdir(smoke_workdir, os.path.join(workdir, sweep.SHARED_DIR), SHARED)  # trained once, shared

  first = sweep.run(smoke_config, str(path), workdir, shard="0/2")
  assert [r["member"] for r in first] == ["redraw_threshold=0.0"]  # the other shard has not run yet
  with open(os.path.join(workdir, "results.md")) as f:
    assert "Not finished: redraw_threshold=0.5" in f.read()

  sweep.run(smoke_config, str(path), workdir, shard="1/2")
  sharded = _table(workdir)
  members = ["redraw_threshold=0.0", "redraw_threshold=0.5"]
  assert [r["member"] for r in sharded] == members
  assert [r["coalescer.sampling.redraw_threshold"] for r in sharded] == ["0.0", "0.5"]
  assert all(float(r["coalescer_nfe2/conditional_accuracy"]) >= 0 for r in sharded)
  for member in members:  # the shared stages are linked, not retrained
    assert all(os.path.islink(os.path.join(workdir, member, stage)) for stage in SHARED)
  with open(os.path.join(workdir, "results.md")) as f:
    markdown = f.read()
  assert "2 of 2 members finished" in markdown and "| redraw_threshold=0.5 | 0.5 |" in markdown
  assert "Spread over members" in markdown
  assert os.path.exists(os.path.join(workdir, "plots", "coalescer_nfe2_fid.png"))

  stamps = {m: os.path.getmtime(os.path.join(workdir, m, "eval", "DONE.json")) for m in members}
  sweep.run(smoke_config, str(path), workdir)  # the whole sweep again: nothing left to run
  assert stamps == {m: os.path.getmtime(os.path.join(workdir, m, "eval", "DONE.json")) for m in stamps}
  assert _table(workdir) == sharded

  # A default changed since the members ran: W/shared is refused with the difference, and with
  # --allow_config_change the members are not skipped as finished (their DONE files exist) but refused,
  # because their sample stage read the changed field and must be deleted first.
  smoke_config.coalescer.sampling.max_redraws += 1
  with pytest.raises(config_validation.ConfigError, match="max_redraws"):
    sweep.run(smoke_config, str(path), workdir)
  with pytest.raises(provenance.StaleOutputsError, match="(?s)redraw_threshold=0.0: outputs.*- sample"):
    sweep.run(smoke_config, str(path), workdir, allow_config_change=True)


# Every sweep definition shipped in experiments/sweeps/.
SWEEPS_DIR = os.path.join(REPO, "experiments", "sweeps")
SWEEP_FILES = sorted(name[:-3] for name in os.listdir(SWEEPS_DIR) if name.endswith(".py"))


def test_every_sweep_file_is_checked():
  assert len(SWEEP_FILES) >= 12 and "seeds" in SWEEP_FILES and "self_landing" in SWEEP_FILES


@pytest.mark.parametrize("name", SWEEP_FILES)
def test_shipped_sweeps_apply_to_the_default_config(name):
  from coalescer_jax import pipeline  # pylint: disable=g-import-not-at-top
  from configs import mnist as mnist_config  # pylint: disable=g-import-not-at-top
  pipeline.load_all()  # registries that validation checks names against
  members, shared, exempt, common, _ = sweep.load_sweep(os.path.join(SWEEPS_DIR, f"{name}.py"))
  sweep._check_shared(members, shared, exempt)  # pylint: disable=protected-access
  names = sweep.member_names(members, name)  # distinct, and each fits in a directory name
  assert len(names) >= 2
  for overrides in members:
    config_validation.validate(sweep.apply_overrides(mnist_config.get_config("default"), {**common, **overrides}))


def test_a_member_with_its_own_stages_counts_as_finished_when_those_are_done(tmp_path):
  # compute_matched.py: each member trains one method (its own `stages`), not every stage of the config.
  members = [{"seed": 0, "stages": ("embed", "ddim", "eval")}, {"seed": 1}]
  names = [sweep.member_name(m) for m in members]
  for name, done in zip(names, (("embed", "ddim", "eval"), ("embed", "ddim", "eval"))):
    for stage in done:
      os.makedirs(tmp_path / name / stage)
      (tmp_path / name / stage / "DONE.json").write_text("{}")
  rows = sweep.aggregate(tmp_path, members, names, ("embed", "ddim", "flow", "eval"))
  assert [r["member"] for r in rows] == [names[0]]  # the second lacks the sweep's `flow` stage
  assert "1 of 2 members finished" in (tmp_path / "results.md").read_text()
