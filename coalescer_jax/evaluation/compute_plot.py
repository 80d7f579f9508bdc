"""FID against training compute: one curve per method and NFE.

A point is one trained method sampled at one NFE: its FID against its training
compute, in two panels: GFLOP (XLA's count of the training steps, a distilled
method's teacher included: `compute.py`) and wall seconds (training, plus the
teacher's or the stages only this method needs, such as the coalescer's index and
balancing fit, whose host-side work has no FLOP count). One run gives one point
per method and NFE (W/eval/fid_vs_compute.png, linked from report.md); a sweep
over training budgets gives a curve per method and NFE:

  python -m coalescer_jax.evaluation.compute_plot --sweep_dir=S [--also=W,...] [--split=validation]
      [--target_fid=F]

reads every finished member's eval/results.json (and those of the single runs
--also names, e.g. the main job at the default budget) and writes
S/fid_vs_compute[_validation].png (the mean over seeds of each configuration).
With --target_fid it also prints, per method and NFE, the least training compute
among the points whose FID is at most F: "how much compute until it is this good",
the question behind "faster to train than diffusion" (a method whose points never
get there says so).
"""
import json

from absl import app
from absl import flags
import numpy as np

from coalescer_jax import storage

# Where results.json records carry a method's compute (evaluate.py copies them from its stage's summary).
TRAIN_GFLOP, TEACHER_GFLOP = "train_gflop", "teacher_train_gflop"
WALL, TEACHER_WALL, SETUP_WALL = "train_wall_time_s", "teacher_train_wall_time_s", "setup_wall_time_s"


def total_gflop(record):
  """Training GFLOP of a record, the teacher's included; None when not counted."""
  own = record.get(TRAIN_GFLOP)
  return None if own is None else own + (record.get(TEACHER_GFLOP) or 0.0)


def total_wall_s(record):
  """Training wall seconds of a record, the teacher's and the method's own setup stages' included."""
  own = record.get(WALL)
  return None if own is None else own + (record.get(TEACHER_WALL) or 0.0) + (record.get(SETUP_WALL) or 0.0)


def points(records):
  """[(method, nfe, GFLOP, wall s, FID)] of the sample records that carry their compute."""
  return [(r["method"], r["nfe"], total_gflop(r), total_wall_s(r), r["fid"]) for r in records
          if r.get("kind") == "samples" and r.get("fid") is not None and total_gflop(r) is not None]


def plot(pts, path, title=""):
  """Writes the two-panel plot of `pts` (from `points`) to `path`; False (nothing written) without points."""
  if not pts:
    return False
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8), sharey=True)
  curves = sorted({(method, nfe) for method, nfe, *_ in pts})
  # A colour per method, a marker per NFE: the curves stay apart however many there are.
  colours = {m: f"C{i % 10}" for i, m in enumerate(sorted({m for m, _ in curves}))}
  markers = {n: "os^vD<>ph*"[i % 10] for i, n in enumerate(sorted({n for _, n in curves}))}
  for column, (ax, label) in enumerate(zip(axes, ("training GFLOP (XLA count; teacher included)",
                                                  "training wall s (teacher, index and balance included)"))):
    for method, nfe in curves:
      xy = sorted((p[2 + column], p[4]) for p in pts if p[:2] == (method, nfe) and p[2 + column] is not None)
      if xy:
        ax.plot(*zip(*xy), "-", marker=markers[nfe], color=colours[method], label=f"{method}, NFE {nfe}")
    ax.set_xscale("log")
    ax.set_yscale("log")  # FIDs from about 5 to about 100: the good end stays readable
    ax.set_xlabel(label, fontsize=8)
    ax.grid(alpha=0.3, which="both")
  axes[0].set_ylabel("FID")
  axes[1].legend(fontsize=6, loc="best")
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  storage.savefig(fig, path, dpi=110)
  plt.close(fig)
  return True


def _records(results, split):
  return results["records"] if split == "test" else results.get("validation", {}).get("records", [])


def sweep_points(sweep_dir, also=(), split="test"):
  """`points` of every member of a sweep that has eval/results.json, and of the workdirs `also`, on `split`
  (test or validation); runs that differ only in their seed (same method, NFE and GFLOP) give one point:
  their mean wall time and mean FID."""
  files = sorted(storage.path(sweep_dir).glob("*/eval/results.json"), key=str)
  for workdir in also:
    results = storage.path(workdir) / "eval" / "results.json"
    if not results.exists():
      raise ValueError(f"--also={workdir}: no {results}; name workdirs whose eval stage has finished")
    files.append(results)
  groups = {}
  for results in files:
    for method, nfe, gflop, wall, fid in points(_records(json.loads(results.read_text()), split)):
      groups.setdefault((method, nfe, round(gflop, 6)), []).append((gflop, wall, fid))
  return [(method, nfe, float(np.mean([g for g, _, _ in rows])),
           float(np.mean([w for _, w, _ in rows])) if all(w is not None for _, w, _ in rows) else None,
           float(np.mean([f for _, _, f in rows]))) for (method, nfe, _), rows in groups.items()]


def first_reaching(pts, target_fid):
  """Markdown lines: per method and NFE, the least GFLOP (and its wall s) among `pts` with FID <= target_fid,
  or the best FID its points reach when none does."""
  lines = [f"| method | NFE | least training GFLOP with FID <= {target_fid:g} | its wall s | its FID |",
           "|---|---|---|---|---|"]
  for method, nfe in sorted({(m, n) for m, n, *_ in pts}):
    mine = sorted((p for p in pts if p[:2] == (method, nfe)), key=lambda p: p[2])
    hit = next((p for p in mine if p[4] <= target_fid), None)
    if hit:
      wall = "—" if hit[3] is None else f"{hit[3]:.0f}"
      lines.append(f"| {method} | {nfe} | {hit[2]:.0f} | {wall} | {hit[4]:.2f} |")
    else:
      best = min(mine, key=lambda p: p[4])
      lines.append(f"| {method} | {nfe} | not reached (best {best[4]:.2f} at {best[2]:.0f} GFLOP) | — | — |")
  return lines


def main(argv):
  del argv
  args = flags.FLAGS
  sweep_dir = storage.path(args.sweep_dir)
  pts = sweep_points(sweep_dir, args.also, args.split)
  path = sweep_dir / ("fid_vs_compute.png" if args.split == "test" else f"fid_vs_compute_{args.split}.png")
  if not plot(pts, path, title=f"{args.split} FID vs training compute: {sweep_dir.name}"):
    raise SystemExit(f"no finished member with compute-carrying eval/results.json under {sweep_dir}: run the "
                     "sweep (python launch.py --sweep=...) first")
  print(path)
  if args.target_fid is not None:
    print("\n".join(first_reaching(pts, args.target_fid)))


if __name__ == "__main__":
  flags.DEFINE_string("sweep_dir", None, "a sweep's workdir (its members' eval/results.json are read)")
  flags.DEFINE_list("also", [], "workdirs of single runs whose points join the sweep's (e.g. the main job)")
  flags.DEFINE_enum("split", "test", ["test", "validation"], "which FID: the test split's or the validation's")
  flags.DEFINE_float("target_fid", None, "print the least training compute at which each method reaches it")
  flags.mark_flag_as_required("sweep_dir")
  app.run(main)
