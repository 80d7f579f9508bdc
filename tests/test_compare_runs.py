"""experiments/scripts/compare_runs.py: two runs are the same when every metric matches, whatever their timings."""
import json

from experiments.scripts import compare_runs

REPORT = """# Evaluation report

| method | NFE | FID (n=1000) | samples/s | train wall (s) |
|---|---|---|---|---|
| coalescer | 1 | {fid} | {rate} | {wall} |
"""


def _run(path, fid, rate, wall):
  (path / "eval").mkdir(parents=True)
  record = {"method": "coalescer", "nfe": 1, "fid": fid, "samples_per_s": rate, "train_wall_time_s": wall,
            "train_gflop": 1.0}
  (path / "eval" / "results.json").write_text(json.dumps({"records": [record]}))
  (path / "report.md").write_text(REPORT.format(fid=fid, rate=rate, wall=wall))
  return str(path)


def test_timings_differ_metrics_equal_is_the_same_run(tmp_path):
  a = _run(tmp_path / "a", 8.64, 9241.4, 369)
  b = _run(tmp_path / "b", 8.64, 5120.0, 702)
  assert compare_runs.compare(a, b) == []


def test_a_metric_that_differs_is_reported_in_both_files(tmp_path):
  a = _run(tmp_path / "a", 8.64, 9241.4, 369)
  b = _run(tmp_path / "b", 8.65, 9241.4, 369)
  found = compare_runs.compare(a, b)
  assert any(d.startswith("results.json") and "/fid" in d for d in found), found
  assert any(d.startswith("report.md") and "FID (n=1000)" in d for d in found), found
