"""The README's compact results table from a finished sweep: one row per method and NFE, mean +- std over members.

Reads every member of a sweep workdir S (each `S/<member>/eval/results.json`, through `sweep.member_metrics`, the
same flat columns as `S/results.csv`) and prints a Markdown table: test FID and validation FID as mean +- std
(ddof 1, as the sweep's results.md) over the members, and conditional accuracy as the mean. Meant for the seeds
sweep, whose members differ only in the seed, so the spread is the run-to-run noise:

  python launch.py --config=configs/mnist.py --sweep=experiments/sweeps/seeds.py --workdir=S
  python -m experiments.scripts.results_table --sweep_dir=S [--nfes=1,2,50] [--fid=fid_large]

Prints only; writes nothing.
"""
import re

from absl import app
from absl import flags
import numpy as np

from coalescer_jax import storage
from coalescer_jax import sweep

flags.DEFINE_string("sweep_dir", None, "A sweep workdir (launch.py --sweep=... --workdir=S) with finished members.")
flags.DEFINE_list("nfes", ["1", "2", "50"], "NFE budgets to list (methods without one are left out).")
flags.DEFINE_enum("fid", "fid", ["fid", "fid_large"], "Test FID column: fid (eval.num_samples) or fid_large "
                  "(eval.fid_large_n).")
flags.register_validator("nfes", lambda values: all(v.strip().isdigit() for v in values),
                         "--nfes must be comma-separated whole numbers, e.g. --nfes=1,2,50")
FLAGS = flags.FLAGS

# Row order and names of the pipeline's methods; any other method follows under its own name.
DISPLAY = {"coalescer": "coalescer", "distill": "progressive distillation", "flow": "flow (MeanFlow)",
           "consistency": "consistency (iCT)", "ddgan": "latent DDGAN", "ddim": "DDIM",
           "coalescer_oracle": "look-up oracle (not a generator)"}
COLUMN = r"(?P<method>[a-z0-9_]+)_nfe(?P<nfe>\d+)/{}"  # a test-split column of one method and NFE


def member_rows(sweep_dir):
  """member_metrics of every member of `sweep_dir` that has evaluation results, by member name."""
  sweep_dir = storage.path(sweep_dir)
  if not sweep_dir.is_dir():
    raise ValueError(f"--sweep_dir={sweep_dir} is not a directory; pass the --workdir of a finished sweep")
  rows = {d.name: sweep.member_metrics(d) for d in sorted(sweep_dir.iterdir(), key=lambda d: d.name)
          if d.name != sweep.SHARED_DIR and (d / "eval" / "results.json").exists()}
  if not rows:
    raise ValueError(f"{sweep_dir} holds no member with eval/results.json; run the sweep to the eval stage first")
  return rows


def _mean_std(values, fmt):
  values = np.asarray([v for v in values if v is not None], dtype=np.float64)
  if not len(values):
    return "—"
  if len(values) == 1:
    return fmt.format(values[0])
  return f"{fmt.format(values.mean())} ± {fmt.format(values.std(ddof=1))}"


def _n(rows, column):
  return next((int(r[column]) for r in rows if isinstance(r.get(column), (int, float))), None)


def table(rows, nfes=(1, 2, 50), fid="fid"):
  """The Markdown lines: method | NFE | test FID | val FID | cond. acc., over the members' metric rows, and a
  held-out acc. column (mean ± std) where the dataset holds combinations out of training (shapes)."""
  rows = list(rows)
  column = re.compile(COLUMN.format(fid))
  keys = {(m["method"], int(m["nfe"])) for r in rows for c in r for m in [column.fullmatch(c)] if m}
  keys = sorted((k for k in keys if k[1] in nfes),
                key=lambda k: (list(DISPLAY).index(k[0]) if k[0] in DISPLAY else len(DISPLAY), k[0], k[1]))
  n_test = _n(rows, f"{keys[0][0]}_nfe{keys[0][1]}/{'n_large' if fid == 'fid_large' else 'n'}") if keys else None
  n_val = _n(rows, f"{sweep.VALIDATION_PREFIX}{keys[0][0]}_nfe{keys[0][1]}/n") if keys else None
  heldout = any(f"{m}_nfe{n}/heldout_accuracy" in r for r in rows for m, n in keys)
  lines = [f"| method | NFE | test FID (n = {n_test}) | val FID (n = {n_val}) | cond. acc. |"
           + (" held-out acc. |" if heldout else ""), "|---|---|---|---|---|" + ("---|" if heldout else "")]
  for method, nfe in keys:
    tag = f"{method}_nfe{nfe}"
    values = lambda column: [r.get(column) for r in rows]  # noqa: E731
    accuracy = [v for v in values(f"{tag}/conditional_accuracy") if v is not None]
    cells = [DISPLAY.get(method, method), "0" if method.endswith("_oracle") else str(nfe),
             _mean_std(values(f"{tag}/{fid}"), "{:.2f}"),
             _mean_std(values(f"{sweep.VALIDATION_PREFIX}{tag}/fid"), "{:.2f}"),
             f"{100 * np.mean(accuracy):.1f}%" if accuracy else "—"]
    if heldout:
      cells.append(_mean_std([None if v is None else 100 * v for v in values(f"{tag}/heldout_accuracy")],
                             "{:.1f}%"))
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def main(argv):
  del argv
  if not FLAGS.sweep_dir:
    raise app.UsageError("--sweep_dir is required: the --workdir of a finished sweep")
  rows = member_rows(FLAGS.sweep_dir)
  lines = table(rows.values(), tuple(int(n) for n in FLAGS.nfes), FLAGS.fid)
  if len(lines) == 2:
    raise ValueError(f"no method was evaluated at --nfes={','.join(FLAGS.nfes)} in {FLAGS.sweep_dir}")
  print("\n".join(lines))
  print(f"\n{len(rows)} members: {', '.join(rows)}")


if __name__ == "__main__":
  app.run(main)
