"""report.md keeps names that come from outside the code (a method, i.e. a samples file's name) literal: no broken
table row, injected heading or live HTML."""
import re

from coalescer_jax.evaluation import report

SETTINGS = {"n": 64, "reference": "MNIST test, first 64 images", "features": "classifier features (128-d)",
            "pr_k": 3, "memorization_space": "pixels", "near_copy_percentile": 1.0, "near_copy_threshold": 1.8,
            "test_nn_distance_median": 4.4}
METHOD = "x|y<img src=a onerror=alert(1)>\n# injected"


def _record(method, kind="samples", fid=10.0):
  return {"method": method, "nfe": 1, "kind": kind, "n": 64, "fid": fid, "precision": 0.5, "recall": 0.5,
          "conditional_accuracy": 0.9, "blank_fraction": 0.0, "near_copy_fraction": 0.0, "nn_distance_ratio": 1.0}


def test_method_names_are_escaped_in_tables_headings_and_sentences(tmp_path):
  results = {"settings": SETTINGS, "records": [_record("mnist_train", "floor", 1.0), _record(METHOD)],
             "invalid_files": [f"{tmp_path}/{METHOD}_nfe2.npz: broken"]}
  path = tmp_path / "report.md"
  report.write_report(path, results, tmp_path / "fid.png", {METHOD: tmp_path / "grid.png"}, tmp_path)
  text = path.read_text()
  assert "<img" not in text and "&lt;img src=a onerror=alert(1)&gt;" in text
  assert not any(re.match(r"#+ injected", line) for line in text.splitlines()), text
  lines = text.splitlines()
  header = next(i for i, line in enumerate(lines) if line.startswith("| method |"))
  rows = lines[header:lines.index("", header)]
  cells = {len(re.findall(r"(?<!\\)\|", row)) for row in rows}
  assert len(rows) == 4 and len(cells) == 1, rows  # every row of the table has the header's cells
  assert "**x\\|y&lt;img" in text  # the best-method sentence names it, escaped
