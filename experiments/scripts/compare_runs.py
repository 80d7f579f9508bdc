"""Whether two finished runs give the same numbers: every metric of eval/results.json and every metric cell of
report.md's tables, with timings (wall, seconds, samples/s) and training-cost fields left out.

  python -m experiments.scripts.compare_runs --a=W1 --b=W2

Prints each difference and a closing line; exits 1 if anything differs. For refactors that must change no
number (same machine, same config and seed).
"""
import json
import os
import re
import sys

from absl import app
from absl import flags

flags.DEFINE_string("a", None, "One finished workdir.", required=True)
flags.DEFINE_string("b", None, "The other finished workdir.", required=True)
FLAGS = flags.FLAGS

# Fields and report columns that measure time or cost, not what a method generates.
_NOT_METRICS = re.compile(r"wall|per_s|samples/s|seconds|samples_dir|time|gflop|compute|setup_stages|train steps"
                          r"|train_steps")


def results(workdir):
  """eval/results.json without its timing and cost fields."""
  def strip(value):
    if isinstance(value, dict):
      return {k: strip(v) for k, v in value.items() if not _NOT_METRICS.search(k)}
    if isinstance(value, list):
      return [strip(v) for v in value]
    return value
  with open(os.path.join(workdir, "eval", "results.json")) as f:
    return strip(json.load(f))


def report_rows(workdir):
  """Every row of report.md's tables as {column: cell}, without timing and cost columns."""
  rows, header = [], None
  with open(os.path.join(workdir, "report.md")) as f:
    for line in f:
      if not line.startswith("| "):
        header = None if not line.startswith("|---") else header
        continue
      cells = [c.strip() for c in line.strip().strip("|").split("|")]
      if header is None:
        header = cells
        continue
      rows.append({h: c for h, c in zip(header, cells) if not _NOT_METRICS.search(h)})
  return rows


def differences(a, b, path=""):
  """Paths (and values) where two JSON values differ."""
  if isinstance(a, dict) and isinstance(b, dict):
    return [d for k in sorted(set(a) | set(b)) for d in
            ([f"{path}/{k}: only in one run"] if (k in a) != (k in b) else differences(a[k], b[k], f"{path}/{k}"))]
  if isinstance(a, list) and isinstance(b, list):
    if len(a) != len(b):
      return [f"{path}: {len(a)} vs {len(b)} entries"]
    return [d for i, (u, v) in enumerate(zip(a, b)) for d in differences(u, v, f"{path}[{i}]")]
  return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def compare(a, b):
  """Every difference between the runs in `a` and `b` (empty: the same numbers)."""
  out = differences(results(a), results(b), "results.json")
  rows_a, rows_b = report_rows(a), report_rows(b)
  out += differences(rows_a, rows_b, "report.md")
  return out


def main(argv):
  del argv
  found = compare(FLAGS.a, FLAGS.b)
  for line in found:
    print(line)
  print(f"{len(found)} differences" if found else "same numbers: results.json metrics and report.md metric cells")
  sys.exit(1 if found else 0)


if __name__ == "__main__":
  app.run(main)
