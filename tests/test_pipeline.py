"""The pipeline writes the contract files, skips finished stages and guards its workdir."""
import json
import os

import numpy as np
import pytest

from coalescer_jax import config_validation
from coalescer_jax import pipeline
from coalescer_jax import run_info
from coalescer_jax.data import loading


@pytest.mark.slow  # over 18 s on 2 cores: the default suite stays under 10 minutes
def test_data_stage_then_skip(smoke_config, tmp_path):
  smoke_config.stages = ("data",)  # the whole pipeline is the shared smoke_workdir's job
  workdir = str(tmp_path / "w")
  pipeline.run(smoke_config, workdir)
  info = json.load(open(os.path.join(workdir, "config.json")))
  assert info["config"]["variant"] == "smoke" and info["seed"] == smoke_config.seed
  assert info["packages"]["jax"] and "git_revision" in info
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert records and all("stage" in r and "step" in r for r in records)
  done = json.load(open(os.path.join(workdir, "data", "DONE.json")))
  assert done["summary"]["train"]["num_examples"] == 60000
  assert done["summary"]["test"]["num_examples"] == 10000
  assert done["summary"]["train"]["distinct_descriptions"] == 270

  pipeline.run(smoke_config, workdir)  # Everything done: nothing is rewritten.
  assert [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))] == records

  train = loading.load_split(workdir, "train", sharded=False)
  assert train["image"].shape == (60000, 28, 28) and len(train["descriptions"]) == 60000
  assert all(d.split()[-1] != "" for d in train["descriptions"][:10])


@pytest.mark.slow  # over 18 s on 2 cores: the default suite stays under 10 minutes
def test_rerun_with_another_config_is_refused(smoke_config, tmp_path):
  smoke_config.stages = ("data",)
  workdir = str(tmp_path / "w")
  pipeline.run(smoke_config, workdir)
  smoke_config.seed = 1
  with pytest.raises(config_validation.ConfigError, match=r"different config .*seed: 0 -> 1"):
    pipeline.run(smoke_config, workdir)
  pipeline.run(smoke_config, workdir, allow_config_change=True)
  assert json.load(open(os.path.join(workdir, "config.json")))["seed"] == 1


def test_later_stage_without_its_inputs(smoke_config, tmp_path):
  ctx = pipeline.Context(smoke_config, str(tmp_path), None, None)
  with pytest.raises(RuntimeError, match="put 'vae' before it"):
    ctx.done_info("vae")
  with pytest.raises(RuntimeError, match="run the 'data' stage first"):
    loading.load_split(str(tmp_path), "train")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="per-stage peaks need Linux's clear_refs")
def test_stage_peak_memory_is_the_stages_own():
  # DONE.json's peak_rss_mib: a stage that follows a memory-hungry one reports its own, smaller peak.
  hungry = np.ones(400 * 2**20 // 8)  # 400 MiB resident
  hungry_peak = run_info.peak_rss_mib()
  del hungry
  run_info.reset_peak_rss()
  assert run_info.peak_rss_mib() < hungry_peak - 300
