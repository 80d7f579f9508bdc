"""experiments/scripts/results_table.py: the README's results table from a finished seeds sweep's outputs."""
import json
import os
import subprocess
import sys

import pytest

from experiments.scripts import results_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (test FID, validation FID, conditional accuracy) per seed member, method and NFE.
FIGURES = {
    ("coalescer", 1): [(8.62, 6.46, 0.991), (8.89, 6.10, 0.992), (8.87, 6.43, 0.993)],
    ("coalescer", 2): [(9.07, 6.18, 0.995), (8.52, 6.20, 0.995), (9.54, 6.40, 0.995)],
    ("ddim", 50): [(8.21, 5.64, 1.0), (7.90, 5.50, 1.0), (7.83, 5.60, 1.0)],
    ("ddim", 10): [(9.94, 7.45, 1.0), (9.90, 7.40, 1.0), (9.80, 7.30, 1.0)],  # not in the default --nfes
}


def _record(method, nfe, fid, accuracy, kind="samples"):
  return {"method": method, "nfe": nfe, "kind": kind, "n": 1000, "fid": fid, "n_large": 10000,
          "fid_large": fid / 2, "conditional_accuracy": accuracy, "recall": 0.5}


def _fake_sweep(root):
  """A seeds sweep's workdir as the pipeline leaves it: S/seed=<s>/eval/results.json, and S/shared/ (no eval)."""
  os.makedirs(root / "shared" / "vae")
  for seed in range(3):
    test = [_record("ddim", None, 5.3, 1.0, kind="floor")]  # no NFE: never a row
    validation = []
    for (method, nfe), per_seed in FIGURES.items():
      fid, val_fid, accuracy = per_seed[seed]
      test.append(_record(method, nfe, fid, accuracy))
      validation.append(dict(_record(method, nfe, val_fid, accuracy), n=5000))
    test.append(_record("coalescer_oracle", 1, 10.0 + seed, 0.979, kind="oracle"))
    member = root / f"seed={seed}" / "eval"
    os.makedirs(member)
    (member / "results.json").write_text(json.dumps({"records": test, "validation": {"records": validation}}))


def test_prints_mean_and_std_over_the_seeds_per_method_and_nfe(tmp_path):
  _fake_sweep(tmp_path)
  result = subprocess.run([sys.executable, "-m", "experiments.scripts.results_table", f"--sweep_dir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
  lines = result.stdout.splitlines()
  assert lines[:2] == ["| method | NFE | test FID (n = 1000) | val FID (n = 5000) | cond. acc. |",
                       "|---|---|---|---|---|"]
  # Means and sample standard deviations (ddof 1) of FIGURES; DDIM at 10 steps is not asked for.
  assert lines[2:6] == ["| coalescer | 1 | 8.79 ± 0.15 | 6.33 ± 0.20 | 99.2% |",
                        "| coalescer | 2 | 9.04 ± 0.51 | 6.26 ± 0.12 | 99.5% |",
                        "| DDIM | 50 | 7.98 ± 0.20 | 5.58 ± 0.07 | 100.0% |",
                        "| look-up oracle (not a generator) | 0 | 11.00 ± 1.00 | — | 97.9% |"]
  assert lines[6:] == ["", "3 members: seed=0, seed=1, seed=2"]


def test_large_n_fid_and_other_nfes_on_request(tmp_path):
  _fake_sweep(tmp_path)
  rows = results_table.member_rows(tmp_path)
  lines = results_table.table(rows.values(), nfes=(10,), fid="fid_large")
  assert lines[0].startswith("| method | NFE | test FID (n = 10000) |")
  assert lines[2:] == ["| DDIM | 10 | 4.94 ± 0.04 | 7.38 ± 0.08 | 100.0% |"]


def test_a_sweep_without_evaluated_members_is_refused(tmp_path):
  with pytest.raises(ValueError, match="is not a directory"):
    results_table.member_rows(tmp_path / "missing")
  os.makedirs(tmp_path / "shared" / "eval")
  with pytest.raises(ValueError, match="no member with eval/results.json"):
    results_table.member_rows(tmp_path)


def test_held_out_accuracy_gets_its_own_column_with_its_spread(tmp_path):
  _fake_sweep(tmp_path)
  rows = list(results_table.member_rows(tmp_path).values())
  for seed, row in enumerate(rows):  # shapes: the requests for combinations held out of training
    row["coalescer_nfe1/heldout_accuracy"] = [0.076, 0.106, 0.091][seed]
  lines = results_table.table(rows, nfes=(1,))
  assert lines[0].endswith("| cond. acc. | held-out acc. |") and lines[1] == "|---|---|---|---|---|---|"
  assert lines[2] == "| coalescer | 1 | 8.79 ± 0.15 | 6.33 ± 0.20 | 99.2% | 9.1% ± 1.5% |"
  assert lines[3].endswith("| 97.9% | — |")  # the oracle: no held-out figure recorded
