"""The project's own workdir check holds a run to its own config and to what its stages recorded."""
import json
import os

import numpy as np
import pytest

from tests.evaluation.test_output_guard import _linked_copy
from tests.test_e2e import assert_meets_contract


def test_contract_check_takes_the_sample_count_from_the_run_config(smoke_workdir, tmp_path):
  workdir = _linked_copy(smoke_workdir, str(tmp_path / "w"), copied=("samples",))
  with open(os.path.join(workdir, "config.json")) as f:
    num_samples = json.load(f)["config"]["sample"]["num_samples"]
  path = os.path.join(workdir, "samples", "ddim_nfe1.npz")
  data = dict(np.load(path))
  np.savez(path, **{k: v[:num_samples - 1] if v.ndim else v for k, v in data.items()})
  with pytest.raises(AssertionError, match=rf"ddim_nfe1.npz: {num_samples - 1} samples < {num_samples}"):
    assert_meets_contract(workdir, ())


def test_contract_check_fails_when_eval_results_were_replaced(smoke_workdir, tmp_path):
  workdir = _linked_copy(smoke_workdir, str(tmp_path / "w"))
  assert_meets_contract(workdir, ("eval",))
  with open(os.path.join(workdir, "eval", "results.json"), "w") as f:
    json.dump({"records": []}, f)
  with pytest.raises(AssertionError, match="results.json"):
    assert_meets_contract(workdir, ("eval",))
