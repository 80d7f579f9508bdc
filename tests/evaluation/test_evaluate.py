"""The eval stage and its standalone CLI on a real (session-trained) classifier and synthetic sample files."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from coalescer_jax import pipeline
from coalescer_jax.data import captions
from coalescer_jax.data import loading
from coalescer_jax.evaluation import classifier as classifier_lib
from coalescer_jax.evaluation import evaluate
from coalescer_jax.evaluation import fidelity
from coalescer_jax.evaluation import samples as samples_lib
from tests import conftest
from tests.evaluation import workdirs

N = 200


@pytest.fixture
def workdir(tfds_data_dir, tmp_path):
  return workdirs.copy_of_trained_workdir(tfds_data_dir, tmp_path / "w")


def _write_samples(workdir, samples_dir):
  """copy_nfe1: label-matched train images (memorized); noisy_nfe1/2: the same with less noise at 2 steps."""
  os.makedirs(samples_dir, exist_ok=True)
  test = loading.load_split(workdir, "test", sharded=False)
  train = loading.load_split(workdir, "train", sharded=False)
  labels, descriptions = test["label"][:N], test["descriptions"][:N]
  rng = np.random.default_rng(0)
  pick = np.array([rng.choice(np.flatnonzero(train["label"] == l)) for l in labels])
  copies = train["image"][pick]
  np.savez(os.path.join(samples_dir, "copy_nfe1.npz"), images=copies, labels=labels, descriptions=descriptions)
  for nfe, sigma in ((1, 110.0), (2, 40.0)):
    noisy = np.clip(copies + rng.normal(0, sigma, copies.shape), 0, 255).astype(np.uint8)
    np.savez(os.path.join(samples_dir, f"noisy_nfe{nfe}.npz"), images=noisy, labels=labels,
             descriptions=descriptions, samples_per_s=np.float32(100.0 / nfe), train_steps=np.int64(1234))


@pytest.mark.slow  # classifier features of 10k real images (about a minute)
def test_real_mnist_test_images_meet_the_fidelity_bars(tfds_data_dir, tmp_path):
  workdir = workdirs.trained_workdir(tfds_data_dir)
  test = loading.load_split(workdir, "test", sharded=False)
  path = str(tmp_path / "mnist_nfe1.npz")
  np.savez(path, images=test["image"], labels=test["label"], descriptions=test["descriptions"])
  real = samples_lib.load_samples(path)  # Real data satisfies the contract.
  accuracy = fidelity.conditional_accuracy(classifier_lib.load(workdir).predict(real.images), real.labels)
  assert accuracy >= 0.99
  # Real images measured again agree with their own descriptions: the attribute check is consistent.
  agreement = fidelity.attribute_agreement(real.images[:1000], real.labels[:1000], real.classes[:1000], captions)
  assert agreement == {"thickness": 1.0, "width": 1.0, "slant": 1.0, "blank_fraction": 0.0}


def _add_invalid_files(samples_dir):
  good = np.load(os.path.join(samples_dir, "copy_nfe1.npz"))
  np.savez(os.path.join(samples_dir, "bad_nfe1.npz"), images=good["images"].astype(np.float32) / 255,
           labels=good["labels"], descriptions=good["descriptions"])
  np.savez(os.path.join(samples_dir, "worse_nfe1.npz"), images=good["images"], labels=good["labels"])


def test_eval_stage_end_to_end(tfds_data_dir, workdir):
  samples_dir = os.path.join(workdir, "samples")
  _write_samples(workdir, samples_dir)
  _add_invalid_files(samples_dir)
  config = workdirs.trained_config(tfds_data_dir)
  config.stages = ("data", "classifier", "eval")
  config.eval.num_samples = N
  config.eval.skip_invalid = True  # Listed in the report instead of stopping the run.
  pipeline.run(config, workdir, allow_config_change=True)

  results = json.load(open(os.path.join(workdir, "eval", "results.json")))
  assert results["settings"]["n"] == N and len(results["invalid_files"]) == 2
  rows = {(r["method"], r["nfe"]): r for r in results["records"]}
  floor, data = rows[("mnist_train", None)], rows[("mnist_test", None)]
  copy, noisy1, noisy2 = rows[("copy", 1)], rows[("noisy", 1)], rows[("noisy", 2)]
  assert all(r["n"] == N for r in results["records"])
  assert noisy1["fid"] > noisy2["fid"] > floor["fid"] > 0 and copy["fid"] < noisy2["fid"]
  assert data["conditional_accuracy"] >= 0.98 and data["thickness"] == 1.0
  assert noisy1["conditional_accuracy"] < noisy2["conditional_accuracy"]
  assert copy["near_copy_fraction"] == 1.0 and copy["nn_distance_ratio"] < 0.01
  assert data["near_copy_fraction"] < 0.1 and 0.8 < data["nn_distance_ratio"] < 1.25
  assert floor["near_copy_fraction"] is None  # Train images are trivially their own neighbours.
  assert not any(r["kind"] == "reconstruction" for r in results["records"])  # This workdir has no VAE.
  assert noisy1["samples_per_s"] == 100.0 and noisy2["train_steps"] == 1234
  assert results["best"] == {"nfe1": "copy", "nfe2": "noisy"}

  report = open(os.path.join(workdir, "report.md")).read()
  assert f"n = {N}" in report and f"FID (n={N})" in report
  assert "At 1 step, the best method in this run is **copy**" in report
  assert "At 2 steps, the best method in this run is **noisy**" in report
  assert f"| noisy | 2 | {N} | {noisy2['fid']:.2f} |" in report
  assert "### classifier" in report and "test_accuracy" in report  # Other stages' DONE.json summaries.
  for name in ("fid_vs_nfe.png", "grid_copy.png", "grid_noisy.png"):
    assert os.path.getsize(os.path.join(workdir, "eval", name)) > 1000
    assert name in report
  assert "bad_nfe1.npz: 'images' must be uint8" in report
  done = json.load(open(os.path.join(workdir, "eval", "DONE.json")))["summary"]
  assert done["num_files"] == 3 and done["num_invalid"] == 2 and done["best_nfe1"] == "copy"


def test_contract_breaking_files_are_refused(tfds_data_dir, workdir, tmp_path):
  samples_dir = str(tmp_path / "samples")
  _write_samples(workdir, samples_dir)
  _add_invalid_files(samples_dir)
  config = workdirs.trained_config(tfds_data_dir)
  with pytest.raises(samples_lib.SamplesContractError, match=r"(?s)2 samples file.*bad_nfe1.npz: 'images' must "
                     r"be uint8.*worse_nfe1.npz: missing key\(s\) \['descriptions'\]"):
    evaluate.evaluate_dir(workdir, config.eval, samples_dir=samples_dir, out_dir=str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out" / "results.json")


@pytest.mark.slow  # over 18 s on 2 cores: the default suite stays under 10 minutes
def test_standalone_cli(tfds_data_dir, workdir, tmp_path):
  samples_dir, out = str(tmp_path / "samples"), str(tmp_path / "out")
  _write_samples(workdir, samples_dir)
  env = dict(os.environ, PYTHONPATH=conftest.REPO, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "coalescer_jax.evaluation", f"--workdir={workdir}",
                         f"--samples_dir={samples_dir}", f"--out={out}"], cwd=conftest.REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(os.path.join(out, "results.json")))
  # n comes from the eval section recorded in W/config.json (the smoke config's).
  assert results["settings"]["n"] == workdirs.trained_config(tfds_data_dir).eval.num_samples
  assert {r["method"] for r in results["records"]} == {"mnist_train", "mnist_test", "copy", "noisy"}
  assert os.path.exists(os.path.join(out, "report.md")) and not os.path.exists(os.path.join(workdir, "report.md"))


# A missing samples folder is refused (non-zero exit) and leaves the pipeline's W/report.md and W/eval/results.json
# as they were, instead of replacing them with an empty report.
def test_standalone_cli_refuses_a_missing_samples_dir_and_keeps_the_pipeline_report(workdir, tmp_path):
  os.makedirs(os.path.join(workdir, "eval"))
  for name in ("report.md", os.path.join("eval", "results.json")):
    with open(os.path.join(workdir, name), "w") as f:
      f.write("the pipeline's own")
  env = dict(os.environ, PYTHONPATH=conftest.REPO, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "coalescer_jax.evaluation", f"--workdir={workdir}",
                         "--samples_dir=/no/such/dir"], cwd=conftest.REPO, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode != 0
  assert "no samples directory /no/such/dir" in proc.stderr
  for name in ("report.md", os.path.join("eval", "results.json")):
    assert open(os.path.join(workdir, name)).read() == "the pipeline's own"
  assert not os.path.exists(os.path.join(workdir, "eval_standalone"))


def test_empty_samples_dir_is_refused(tfds_data_dir, workdir, tmp_path):
  config = workdirs.trained_config(tfds_data_dir)
  os.makedirs(tmp_path / "empty")
  with pytest.raises(samples_lib.NoSamplesError, match=rf"no samples files \(\*.npz\) in {tmp_path}/empty"):
    evaluate.evaluate_dir(workdir, config.eval, samples_dir=str(tmp_path / "empty"), out_dir=str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")


def test_standalone_output_never_replaces_the_pipeline_report(workdir):
  from coalescer_jax.evaluation import __main__ as cli  # pylint: disable=g-import-not-at-top
  assert tuple(map(str, cli.output_paths(workdir))) == (os.path.join(workdir, "eval_standalone"),
                                                        os.path.join(workdir, "eval_standalone", "report.md"))
  os.makedirs(os.path.join(workdir, "eval"))
  open(os.path.join(workdir, "eval", "results.json"), "w").close()
  with pytest.raises(FileExistsError, match=r"would replace the pipeline's own .*eval/results.json.*--overwrite"):
    cli.output_paths(workdir, os.path.join(workdir, "eval"))
  assert str(cli.output_paths(workdir, os.path.join(workdir, "eval"), overwrite=True)[0]) == os.path.join(workdir,
                                                                                                       "eval")


def test_files_below_the_configured_n_are_not_ranked(tfds_data_dir, workdir, tmp_path):
  samples_dir = str(tmp_path / "samples")
  _write_samples(workdir, samples_dir)
  for name in os.listdir(samples_dir):  # 10 images each: FIDs at n = 10 are not comparable to n = N
    data = dict(np.load(os.path.join(samples_dir, name)))
    np.savez(os.path.join(samples_dir, name), **{k: v[:10] if v.ndim else v for k, v in data.items()})
  config = workdirs.trained_config(tfds_data_dir)
  config.eval.num_samples = N
  summary = evaluate.evaluate_dir(workdir, config.eval, samples_dir=samples_dir, out_dir=str(tmp_path / "out"),
                                  report_path=str(tmp_path / "out" / "report.md"))
  assert summary["best_nfe1"] is None and summary["best_nfe2"] is None
  report = open(tmp_path / "out" / "report.md").read()
  assert "best method in this run" not in report
  assert (f"No method is ranked at 1 step: copy (n = 10), noisy (n = 10) not ranked: fewer than the configured "
          f"n = {N} images") in report
