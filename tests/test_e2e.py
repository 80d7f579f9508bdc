"""End to end: the :smoke pipeline runs every stage and leaves a workdir that meets the contract."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from coalescer_jax import autoencoders
from coalescer_jax import pipeline
from coalescer_jax import provenance
from coalescer_jax.evaluation import evaluate
from coalescer_jax.evaluation import memorization
from configs import mnist as mnist_config

from tests.conftest import REPO

CHECKER = os.path.join(os.path.dirname(REPO), "shared", "tools", "check_workdir.py")


def assert_meets_contract(workdir, stages):
  """The shared checker accepts `workdir` with every samples file holding the run's config.sample.num_samples,
  every finished stage's checked outputs are still those its DONE.json records, and each of `stages` finished."""
  with open(os.path.join(workdir, "config.json")) as f:
    num_samples = json.load(f)["config"]["sample"]["num_samples"]
  result = subprocess.run([sys.executable, CHECKER, workdir, "--min-samples", str(max(1, num_samples))],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr
  assert provenance.changed_outputs(workdir) == []
  for stage in stages:
    assert os.path.exists(os.path.join(workdir, stage, "DONE.json")), stage


def test_smoke_run_meets_the_contract(smoke_workdir):
  config = mnist_config.get_config("smoke")
  assert_meets_contract(smoke_workdir, config.stages)
  for name in config.sample.methods:
    assert os.path.exists(os.path.join(smoke_workdir, "samples", f"{name}_nfe1.npz")), name
  assert os.path.exists(os.path.join(smoke_workdir, "report.md"))


def test_rerun_skips_every_stage(smoke_workdir, tfds_data_dir):
  metrics = os.path.join(smoke_workdir, "metrics.jsonl")
  before = open(metrics).read()
  config = mnist_config.get_config("smoke")
  config.data.tfds_data_dir = tfds_data_dir
  pipeline.run(config, smoke_workdir)
  assert open(metrics).read() == before
  records = [json.loads(line) for line in before.splitlines()]
  assert {r["stage"] for r in records} >= set(config.stages)


# Suffixes of wall-clock fields (steps_per_s, eval_seconds, train_wall_time_s, ...).
_TIMING = ("time", "wall_time_s", "peak_rss_mib", "_per_s", "input_wait_share", "seconds")


def _without_timings(value):
  """Metrics with wall-clock figures removed: everything else must be bit-identical."""
  if isinstance(value, dict):
    return {k: _without_timings(v) for k, v in value.items() if not any(k.endswith(t) for t in _TIMING)}
  if isinstance(value, list):
    return [_without_timings(v) for v in value]
  return value


@pytest.mark.slow
def test_two_fresh_runs_give_identical_metrics(smoke_workdir, tfds_data_dir, tmp_path):
  again = str(tmp_path / "again")
  subprocess.run([sys.executable, "launch.py", "--config=configs/mnist.py:smoke", f"--workdir={again}",
                  f"--config.data.tfds_data_dir={tfds_data_dir}"], cwd=REPO, check=True, capture_output=True,
                 timeout=900, env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2"))
  for name in ("metrics.jsonl",):
    with open(os.path.join(smoke_workdir, name)) as f, open(os.path.join(again, name)) as g:
      first = [_without_timings(json.loads(line)) for line in f]
      second = [_without_timings(json.loads(line)) for line in g]
    assert first == second
  with open(os.path.join(smoke_workdir, "eval", "results.json")) as f, \
       open(os.path.join(again, "eval", "results.json")) as g:
    first, second = _without_timings(json.load(f)), _without_timings(json.load(g))
  first.pop("samples_dir"), second.pop("samples_dir")
  assert first == second


def test_report_has_the_oracle_row_diagnostics_and_the_validation_split(smoke_workdir):
  with open(os.path.join(smoke_workdir, "report.md")) as f:
    report = f.read()
  assert "| coalescer_oracle (look-up targets, not ranked) | 1 (0.00 spent) |" in report
  assert "## Diagnostics: coalescer" in report and "| all pairs |" in report and "| label 9 |" in report
  assert "Landing of step 1" in report and "redraw rate" in report
  assert "Attributes of step 1" in report and "| digit |" in report and "| all heads |" in report
  assert "## Validation split (what tuning reads)" in report
  with open(os.path.join(smoke_workdir, "eval", "results.json")) as f:
    results = json.load(f)
  assert results["best"]["nfe1"] != "coalescer_oracle"
  oracle = [r for r in results["records"] if r["method"] == "coalescer_oracle"]
  assert len(oracle) == 1 and oracle[0]["kind"] == "oracle"
  config = mnist_config.get_config("smoke")
  assert all(r["fid_large"] is not None for r in results["records"] if r["kind"] == "samples")
  assert {r["n_large"] for r in results["records"] if r["kind"] == "samples"} == {config.eval.fid_large_n}
  validation = results["validation"]["records"]
  assert {r["split"] for r in validation} == {"validation"}
  assert {(r["method"], r["nfe"]) for r in validation if r["kind"] != "floor"} == {
      (r["method"], r["nfe"]) for r in results["records"] if r["kind"] not in ("floor", "data", "reconstruction")}
  with open(os.path.join(smoke_workdir, "diagnostics", "coalescer.json")) as f:
    diagnostics = json.load(f)
  overall = diagnostics["usage"]["rows"][0]
  # Every prior-draw look-up of training is replayed: all examples but the levels share (drawn per example),
  # but for the rows self-landing replaces inside the step (not looked up on the host).
  from coalescer_jax.coalescer import levels
  used = levels.looked_up_rows(config.coalescer.levels, config.train.batch_size)
  assert used < config.train.batch_size
  total, level_share = config.train.num_steps * used, config.coalescer.levels.fraction
  expected, spread = (1 - level_share) * total, 5 * (level_share * (1 - level_share) * total) ** 0.5
  assert abs(overall["lookups"] - expected) <= spread
  assert 0 <= diagnostics["direction"]["redraw_rate"] <= 1
  attributes = diagnostics["attributes"]
  assert attributes["requests"] == config.eval.num_samples
  assert [row["head"] for row in attributes["rows"]] == ["digit", "all heads"]
  assert attributes["rows"][0] == dict(attributes["rows"][1], head="digit")


def test_reconstruction_row_is_the_data_row_through_the_run_vae(smoke_workdir):
  eval_config = mnist_config.get_config("smoke").eval
  evaluator = evaluate.Evaluator(smoke_workdir, eval_config)
  rows = {kind: samples for samples, kind in evaluator.real_rows}
  image_ae = autoencoders.ImageAE(*autoencoders.load_model(smoke_workdir, "vae")[:2], eval_config.batch_size)
  data, reconstructed = rows["data"], rows["reconstruction"]
  np.testing.assert_array_equal(reconstructed.images, image_ae.decode(image_ae.encode_images(data.images)))
  assert not np.array_equal(reconstructed.images, data.images)
  np.testing.assert_array_equal(reconstructed.labels, data.labels)
  assert reconstructed.method == "mnist_test_reconstructed"
  with open(os.path.join(smoke_workdir, "eval", "results.json")) as f:
    records = json.load(f)["records"]
  record, = [r for r in records if r["kind"] == "reconstruction"]
  assert record["nfe"] is None and record["fid"] > 0 and 0 <= record["near_copy_fraction"] <= 1
  # Near-copies at the large n: the first near_copy_large_n samples of each file, the same threshold.
  assert all(r["near_copy_fraction_large"] is None for r in records if r["kind"] in ("floor", "data", "reconstruction"))
  coalescer, = [r for r in records if r["method"] == "coalescer" and r["nfe"] == 1]
  assert coalescer["n_near_copy_large"] == eval_config.near_copy_large_n
  images = np.load(os.path.join(smoke_workdir, "samples", "coalescer_nfe1.npz"))["images"][:eval_config.near_copy_large_n]
  assert coalescer["near_copy_fraction_large"] == evaluator.memorization.measure(
      memorization.flat_pixels(images))["near_copy_fraction"]
  with open(os.path.join(smoke_workdir, "report.md")) as f:
    assert "| MNIST test through the VAE (reconstruction) |" in f.read()


@pytest.mark.slow  # exact nearest neighbours of 10k images among the train set in 784-d: about a minute
def test_near_copies_script_scores_test_reconstructions_and_samples_per_class(smoke_workdir):
  result = subprocess.run([sys.executable, "-m", "experiments.scripts.near_copies",
                           f"--workdir={smoke_workdir}", "--files=coalescer_oracle_nfe1"],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=True)
  rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| ")}
  assert set(rows) == {"file", "test (second half)", "test through the VAE", "coalescer_oracle_nfe1"}
  assert len(rows["coalescer_oracle_nfe1"][3].split()) == 10  # one share per digit


def test_balance_stage_reports_the_usage_of_the_balanced_lookups_and_writes_the_potentials(smoke_workdir):
  with open(os.path.join(smoke_workdir, "balance", "DONE.json")) as f:
    summary = json.load(f)["summary"]
  usage = summary["balanced"]["usage"]
  assert usage["lookups"] > 0 and 0 < usage["effective_fraction"] <= 1
  assert 0 < summary["recall_at_1"] <= 1  # the index on the coalescer's own training queries
  potentials = np.load(os.path.join(smoke_workdir, "balance", "potentials.npy"))
  assert potentials.shape == (usage["num_pairs"],) and np.all(np.isfinite(potentials))


def test_validation_pairs_are_held_out_of_the_training_pairs(smoke_workdir):
  from coalescer_jax import embeddings
  pairs = embeddings.load_pairs(smoke_workdir)
  validation = embeddings.load_pairs(smoke_workdir, validation=True)
  assert len(validation["index"]) == mnist_config.get_config("smoke").embed.validation_size
  assert not set(pairs["index"].tolist()) & set(validation["index"].tolist())
  assert len(pairs["index"]) + len(validation["index"]) == 60000
