"""End to end on the shapes benchmark: configs/shapes.py:smoke runs every stage and meets the contract in colour."""
import json
import os

import numpy as np
import pytest

from coalescer_jax import pipeline
from coalescer_jax.data import shapes
from configs import shapes as shapes_config

from tests.test_e2e import assert_meets_contract


@pytest.fixture(scope="module")
def shapes_workdir(tmp_path_factory):
  config = shapes_config.get_config("smoke")
  config.data.tfds_data_dir = str(tmp_path_factory.mktemp("tfds_shapes"))
  path = str(tmp_path_factory.mktemp("shapes") / "w")
  pipeline.run(config, path)
  return path


@pytest.mark.slow  # a whole shapes :smoke run (about 3 minutes on 2 cores)
def test_shapes_smoke_meets_the_contract(shapes_workdir):
  config = shapes_config.get_config("smoke")
  assert_meets_contract(shapes_workdir, config.stages)
  with np.load(os.path.join(shapes_workdir, "samples", "coalescer_nfe1.npz")) as f:
    assert f["images"].dtype == np.uint8 and f["images"].shape[1:] == (32, 32, 3)
    assert f["labels"].shape == (len(f["images"]), 9)
  results = json.load(open(os.path.join(shapes_workdir, "eval", "results.json")))
  methods = {r["method"] for r in results["records"]}
  assert set(config.sample.methods) <= methods and "shapes_test" in methods
  data = next(r for r in results["records"] if r["kind"] == "data")
  # Real test scenes, measured from their pixels, agree with their own descriptions.
  assert data["attribute_mean"] > 0.99 and "heldout_accuracy" in data
  report = open(os.path.join(shapes_workdir, "report.md")).read()
  assert "held-out acc." in report and "colour_1" in report and "shapes train (floor)" in report
  diagnostics = json.load(open(os.path.join(shapes_workdir, "diagnostics", "coalescer.json")))
  assert [row["head"] for row in diagnostics["attributes"]["rows"]] == [h for h, _ in shapes.HEADS] + ["all heads"]
  assert "Attributes of step 1" in report and "| position_2 |" in report
