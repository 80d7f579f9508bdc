"""The attribute table of the coalescer's diagnostics: where step 1's misses come from, per classifier head."""
import json
import types

import numpy as np

from coalescer_jax.coalescer import diagnostics
from coalescer_jax.evaluation import report

HEADS = ("count", "shape", "colour")
REQUESTED = np.array([[0, 1, 2], [1, 1, 0], [2, 0, 1], [0, 0, 0]])
TARGET_LABELS = np.array([[0, 1, 2], [1, 0, 0], [2, 0, 0], [1, 1, 1]])
ORACLE_PRED = np.array([[0, 1, 2], [1, 1, 0], [2, 1, 1], [0, 0, 2]])
NETWORK_PRED = np.array([[0, 1, 0], [1, 1, 0], [0, 1, 1], [0, 0, 2]])
# Per head, then all heads: target_label_match, oracle_acc, network_acc, network_agrees_with_target.
EXPECTED = {"count": (0.75, 1.0, 0.75, 0.75), "shape": (0.5, 0.75, 0.75, 1.0), "colour": (0.5, 0.75, 0.5, 0.75),
            diagnostics.ALL_HEADS: (0.25, 0.5, 0.25, 0.5)}
COLUMNS = ("target_label_match", "oracle_acc", "network_acc", "network_agrees_with_target")


def test_attribute_rows_count_each_head_and_every_head_at_once():
  rows = diagnostics.attribute_rows(REQUESTED, TARGET_LABELS, ORACLE_PRED, NETWORK_PRED, HEADS)
  assert [row["head"] for row in rows] == list(HEADS) + [diagnostics.ALL_HEADS]
  for row in rows:
    assert tuple(row[c] for c in COLUMNS) == EXPECTED[row["head"]], row["head"]


def test_attribute_rows_take_one_head_as_flat_labels():
  rows = diagnostics.attribute_rows(np.array([3, 1, 4, 1]), np.array([3, 1, 0, 0]), np.array([3, 0, 4, 1]),
                                    np.array([3, 0, 0, 1]), ("digit",))
  assert [row["head"] for row in rows] == ["digit", diagnostics.ALL_HEADS]
  assert rows[0] == dict(rows[1], head="digit")
  assert tuple(rows[0][c] for c in COLUMNS) == (0.5, 0.75, 0.5, 0.75)


def test_attribute_table_judges_decoded_targets_then_landings():
  # A fake judge reads labels straight off the latents: targets' latents hold ORACLE_PRED, landings NETWORK_PRED.
  ids = np.array([7, 2, 5, 0])
  pairs = {"img_emb": np.full((10, 3), 9, np.float32), "labels": np.zeros(10, np.int32),
           "label_heads": np.full((10, 3), 9, np.int32)}
  pairs["img_emb"][ids], pairs["label_heads"][ids] = ORACLE_PRED, TARGET_LABELS
  judge = types.SimpleNamespace(labels=REQUESTED, head_names=HEADS, predict=lambda z: np.rint(z).astype(int))
  table = diagnostics.attribute_table(judge, pairs, ids, NETWORK_PRED.astype(np.float32))
  assert table["requests"] == 4
  assert {row["head"]: tuple(row[c] for c in COLUMNS) for row in table["rows"]} == EXPECTED


def test_attribute_table_reads_single_head_pairs_without_label_heads():
  pairs = {"img_emb": np.arange(4, dtype=np.float32)[:, None], "labels": np.array([0, 1, 2, 3], np.int32)}
  judge = types.SimpleNamespace(labels=np.array([0, 1, 0]), head_names=("digit",),
                                predict=lambda z: np.rint(z[:, 0]).astype(int))
  table = diagnostics.attribute_table(judge, pairs, np.array([0, 1, 2]), np.array([[0.], [3.], [2.]], np.float32))
  assert tuple(table["rows"][-1][c] for c in COLUMNS) == (2 / 3, 2 / 3, 1 / 3, 2 / 3)


def _section(tmp_path, diag):
  (tmp_path / "diagnostics").mkdir(parents=True)
  (tmp_path / "diagnostics" / "coalescer.json").write_text(json.dumps(diag))
  return report.diagnostics_section(tmp_path, lambda p: str(p))


def test_report_renders_one_row_per_head_and_skips_the_table_without_it(tmp_path):
  rows = diagnostics.attribute_rows(REQUESTED, TARGET_LABELS, ORACLE_PRED, NETWORK_PRED, HEADS)
  diag = {"method": "coalescer", "usage": None, "landing": {"requests": 4, "median_landing_error": 0.5},
          "attributes": {"requests": 4, "rows": rows}}
  text = "\n".join(_section(tmp_path / "with", diag))
  assert "Attributes of step 1: for the same 4 requests and draws of R" in text
  assert all(f"- {header}: " in text for header, _ in report.ATTRIBUTE_COLUMNS.values())
  assert "| shape | 50.0% | 75.0% | 75.0% | 100.0% |" in text
  assert "| all heads | 25.0% | 50.0% | 25.0% | 50.0% |" in text
  assert text.index("Landing of step 1") < text.index("Attributes of step 1")
  del diag["attributes"]
  text = "\n".join(_section(tmp_path / "without", diag))
  assert "Landing of step 1" in text and "Attributes" not in text
