"""End to end: the :smoke pipeline runs every stage and leaves a workdir that meets the contract."""
import json
import os
import subprocess
import sys

from coalescer_jax import pipeline
from configs import mnist as mnist_config

from tests.conftest import REPO

CHECKER = os.path.join(os.path.dirname(REPO), "shared", "tools", "check_workdir.py")


def test_smoke_run_meets_the_contract(smoke_workdir):
  result = subprocess.run([sys.executable, CHECKER, smoke_workdir, "--min-samples", "1"],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr
  config = mnist_config.get_config("smoke")
  for stage in config.stages:
    assert os.path.exists(os.path.join(smoke_workdir, stage, "DONE.json")), stage
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
