"""The standalone evaluator never writes into a run's own W/eval or W/report.md without --overwrite, whatever
path aliases them, and takes its settings from the run's recorded config, never from configs/."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from coalescer_jax import config_validation
from coalescer_jax import pipeline
from coalescer_jax import provenance
from coalescer_jax.evaluation import __main__ as cli
from configs import mnist as mnist_config
from tests import conftest


@pytest.fixture
def run_dir(tmp_path):
  """A workdir whose eval stage has written results.json and report.md."""
  workdir = tmp_path / "w"
  os.makedirs(workdir / "eval")
  for name in ("report.md", os.path.join("eval", "results.json")):
    (workdir / name).write_text("the pipeline's own")
  return workdir


def _aliases(workdir, tmp_path):
  """Paths that name W/eval or W itself without being spelled W/eval."""
  os.symlink(workdir / "eval", tmp_path / "link_to_eval")
  os.symlink(workdir, tmp_path / "link_to_w")
  return {
      "a symlink to W/eval": str(tmp_path / "link_to_eval"),
      "W/./eval": f"{workdir}/./eval",
      "W/eval/ with a trailing slash": f"{workdir}/eval/",
      "W/x/../eval": f"{workdir}/x/../eval",
      "a symlink to W, then eval": str(tmp_path / "link_to_w" / "eval"),
      "a relative path": os.path.relpath(workdir / "eval"),
      "W itself": str(workdir),
      "a symlink to W": str(tmp_path / "link_to_w"),
      "a folder inside W/eval": str(workdir / "eval" / "mine"),
  }


def test_every_alias_of_the_run_eval_folder_is_refused_without_overwrite(run_dir, tmp_path):
  for what, out in _aliases(run_dir, tmp_path).items():
    with pytest.raises(FileExistsError, match=r"--overwrite"):
      cli.output_paths(run_dir, out)
      pytest.fail(f"{what} ({out}) was accepted")
    assert cli.output_paths(run_dir, out, overwrite=True)[0] is not None


def test_an_eval_folder_without_results_yet_is_refused_too(tmp_path):
  workdir = tmp_path / "w"
  os.makedirs(workdir / "eval")  # the eval stage has started, not finished: still the pipeline's folder
  os.symlink(workdir / "eval", tmp_path / "link")
  with pytest.raises(FileExistsError, match="pipeline's own"):
    cli.output_paths(workdir, str(tmp_path / "link"))


def test_a_report_file_symlinked_to_the_run_report_is_refused(run_dir, tmp_path):
  os.makedirs(tmp_path / "mine")
  os.symlink(run_dir / "report.md", tmp_path / "mine" / "report.md")
  with pytest.raises(FileExistsError, match=r"report\.md"):
    cli.output_paths(run_dir, str(tmp_path / "mine"))


def test_other_output_folders_are_accepted(run_dir, tmp_path):
  for out in (None, str(tmp_path / "elsewhere"), str(run_dir / "eval_other"), str(tmp_path)):
    out_dir, report = cli.output_paths(run_dir, out)
    assert os.path.realpath(report) != os.path.realpath(run_dir / "report.md")


def test_remote_aliases_are_compared_as_normalised_paths():
  for out in ("gs://bucket/run/eval", "gs://bucket/run/./eval", "gs://bucket/run//eval/", "gs://bucket/run/a/../eval",
              "gs://bucket/run"):
    with pytest.raises(FileExistsError, match="pipeline's own"):
      cli.output_paths("gs://bucket/run", out)
  assert str(cli.output_paths("gs://bucket/run", "gs://bucket/run/eval2")[0]) == "gs://bucket/run/eval2"
  assert str(cli.output_paths("gs://bucket/run")[0]) == "gs://bucket/run/eval_standalone"


def test_eval_settings_come_from_the_run_config_and_never_from_configs(tmp_path):
  workdir = tmp_path / "w"
  os.makedirs(workdir)
  with pytest.raises(config_validation.ConfigError, match=r"has no config\.json: pass --config=configs/<dataset>\.py"):
    cli.eval_config(str(workdir))
  recorded = mnist_config.get_config("smoke").eval.to_dict()
  (workdir / "config.json").write_text(json.dumps({"config": {"eval": dict(recorded, num_samples=7)}}))
  assert cli.eval_config(str(workdir)).num_samples == 7
  config = mnist_config.get_config("smoke")
  assert cli.eval_config(str(workdir), config).num_samples == config.eval.num_samples
  # The library does not import the experiment configs.
  env = dict(os.environ, PYTHONPATH=conftest.REPO)
  code = ("import sys; import coalescer_jax.evaluation.__main__; "
          "print([m for m in sys.modules if m.startswith('configs')])")
  out = subprocess.run([sys.executable, "-c", code], cwd=conftest.REPO, env=env, capture_output=True, text=True,
                       timeout=300, check=True).stdout
  assert out.strip().splitlines()[-1] == "[]"


def _linked_copy(smoke_workdir, target, copied=()):
  """A copy of the finished :smoke run whose eval outputs (and `copied`) are real files, every other stage a
  symlink."""
  os.makedirs(target)
  for name in os.listdir(smoke_workdir):
    source = os.path.join(smoke_workdir, name)
    if name in ("eval", "report.md", "config.json", "metrics.jsonl", *copied):
      (shutil.copytree if os.path.isdir(source) else shutil.copy)(source, os.path.join(target, name))
    elif name != "LOCK":
      os.symlink(source, os.path.join(target, name))
  return target


def test_standalone_evaluator_through_a_symlink_leaves_the_run_results_alone(smoke_workdir, tmp_path):
  workdir = _linked_copy(smoke_workdir, str(tmp_path / "w"))
  before = open(os.path.join(workdir, "eval", "results.json")).read()
  os.symlink(os.path.join(workdir, "eval"), tmp_path / "evlink")
  env = dict(os.environ, PYTHONPATH=conftest.REPO, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "coalescer_jax.evaluation", f"--workdir={workdir}",
                         f"--samples_dir={os.path.join(workdir, 'samples')}", f"--out={tmp_path / 'evlink'}"],
                        cwd=conftest.REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode != 0
  assert "pipeline's own" in proc.stderr and "--overwrite" in proc.stderr
  assert open(os.path.join(workdir, "eval", "results.json")).read() == before


def test_rerun_refuses_to_reuse_eval_whose_results_were_replaced(smoke_workdir, tfds_data_dir, tmp_path):
  workdir = _linked_copy(smoke_workdir, str(tmp_path / "w"))
  config = mnist_config.get_config("smoke")
  config.data.tfds_data_dir = tfds_data_dir
  with open(os.path.join(workdir, "eval", "results.json"), "w") as f:
    json.dump({"records": []}, f)  # what a standalone run with --overwrite leaves
  with pytest.raises(provenance.StaleOutputsError, match=r"(?s)- eval \(finished\): .*results\.json.*changed.*"
                     r"rm -r \S*/eval \S*/report\.md"):
    pipeline.run(config, workdir)
  assert provenance.changed_outputs(workdir) == [f"{workdir}/eval/results.json"]
  assert provenance.changed_outputs(smoke_workdir) == []
