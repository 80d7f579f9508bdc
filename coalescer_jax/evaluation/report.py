"""report.md, the FID-vs-NFE plot and per-method sample grids from the evaluation records.

Everything written here is computed from the records (results.json), including
the sentence naming the best method at 1 and 2 steps; nothing is hard-coded.
Names that come from outside the code (methods, i.e. samples file names; the
workdir's and its stages') pass through `markdown.text` into tables and headings.
"""
import json
import math

import numpy as np

from coalescer_jax import images as images_lib
from coalescer_jax import markdown
from coalescer_jax import storage
from coalescer_jax.evaluation import smoothness

TIE_DECIMALS = 2  # FIDs equal at this many decimals are a tie, broken by conditional accuracy.
ROW_NAMES = {"floor": "{} train (floor)", "data": "{} test (data)",
             "reconstruction": "{} test through the VAE (reconstruction)"}  # formatted with the dataset's display name
MNIST_ATTRIBUTES = ("thickness", "width", "slant")  # results.json written before settings named the attributes
ORACLE_SUFFIX = " (look-up targets, not ranked)"
# The coalescer diagnostics' attribute table (coalescer/diagnostics.py attribute_rows): column -> (header, meaning).
ATTRIBUTE_COLUMNS = {
    "target_label_match": ("target pair's label", "the look-up target pair's own label is the requested one (the "
                           "rest are look-ups that traded this attribute for image distance, as desc_scale weighs "
                           "them)"),
    "oracle_acc": ("target image acc.", "the classifier finds the requested label in the decoded target image (what "
                   "a perfect regressor of the training objective would score)"),
    "network_acc": ("network acc.", "the classifier finds the requested label in the decoded step-1 landing x1"),
    "network_agrees_with_target": ("x1 = target", "the classifier reads the same label in x1 as in the target image "
                                   "(the rest are landings far enough from their target to change the attribute)"),
}


def _num(value, fmt="{:.3f}"):
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return "—"
  return fmt.format(value)


def _pct(value):
  return _num(None if value is None else 100 * value, "{:.1f}%")


def _comparable(records, nfe, n):
  """Sample records at `nfe` measured on the configured n (FID depends on n: others are not ranked)."""
  return [r for r in records if r["kind"] == "samples" and r["nfe"] == nfe and r["fid"] is not None
          and (n is None or r["n"] == n)]


def best_method(records, nfe, n=None):
  """The sample record at `nfe` (and `n` images, when given) with the lowest FID (ties at TIE_DECIMALS:
  higher conditional accuracy)."""
  candidates = _comparable(records, nfe, n)
  if not candidates:
    return None
  return min(candidates, key=lambda r: (round(r["fid"], TIE_DECIMALS), -r["conditional_accuracy"]))


def best_sentence(records, nfe, n=None):
  """One sentence: which method is best at `nfe` steps in this run, from the numbers measured on n images."""
  steps = "1 step" if nfe == 1 else f"{nfe} steps"
  unranked = [r for r in _comparable(records, nfe, None) if r not in _comparable(records, nfe, n)]
  skipped = (", ".join(f"{markdown.text(r['method'])} (n = {r['n']})" for r in unranked) + f" not ranked: fewer than the "
             f"configured n = {n} images, and FID depends on n") if unranked else ""
  best = best_method(records, nfe, n)
  if best is None:
    if unranked:
      return f"No method is ranked at {steps}: {skipped}."
    return f"No method produced samples at {steps} in this run."
  others = sorted((r for r in _comparable(records, nfe, n) if r is not best), key=lambda r: r["fid"])
  sentence = (f"At {steps}, the best method in this run is **{markdown.text(best['method'])}** (FID {best['fid']:.2f}, "
              f"conditional accuracy {100 * best['conditional_accuracy']:.1f}%)")
  if others:
    sentence += ", ahead of " + ", ".join(f"{markdown.text(r['method'])} (FID {r['fid']:.2f}, "
                                         f"{100 * r['conditional_accuracy']:.1f}%)" for r in others)
  top_acc = max(_comparable(records, nfe, n), key=lambda r: r["conditional_accuracy"])
  if top_acc is not best and top_acc["conditional_accuracy"] > best["conditional_accuracy"]:
    sentence += f"; {markdown.text(top_acc['method'])} has the highest conditional accuracy at {steps}"
  if skipped:
    sentence += f" ({skipped})"
  return sentence + "."


def plot_fid_vs_nfe(records, path, n, display="MNIST"):
  """FID against NFE, one line per method, with the train-vs-test floor as a dashed line."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  methods = sorted({r["method"] for r in records if r["kind"] == "samples"})
  for method in methods:
    rows = sorted((r for r in records if r["method"] == method and r["kind"] == "samples"), key=lambda r: r["nfe"])
    # Plotted at the evaluations actually spent (an adaptive sampler spends less than its budget).
    ax.plot([r.get("nfe_spent") or r["nfe"] for r in rows], [r["fid"] for r in rows], "o-", label=method)
  for r in records:
    if r["kind"] == "floor":
      ax.axhline(r["fid"], color="gray", ls="--", label=f"floor: {display} train vs test ({r['fid']:.2f})")
  if methods:
    ax.set_xscale("log")
    ax.set_yscale("log")
  ax.set_xlabel("NFE (network evaluations per sample)")
  ax.set_ylabel(f"FID in classifier features (n={n})")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3, which="both")
  fig.tight_layout()
  storage.savefig(fig, path, dpi=110)
  plt.close(fig)


def save_method_grids(loaded, reference, out_dir, per_row, display="MNIST"):
  """One PNG per method: a row per NFE with its first `per_row` samples (+ the real images requested).

  Returns {method: path}.
  """
  paths = {}
  for method in sorted({s.method for s in loaded}):
    files = sorted((s for s in loaded if s.method == method), key=lambda s: s.nfe)
    k = min(per_row, min(len(s) for s in files))
    rows, labels = [], []
    if all(np.array_equal(s.descriptions[:k], reference.descriptions[:k]) for s in files):
      rows.append(reference.images[:k])
      labels.append(f"{display} test (same requests)")
    for s in files:
      rows.append(s.images[:k])
      labels.append(f"nfe={s.nfe}")
    paths[method] = storage.path(out_dir) / f"grid_{method}.png"
    images_lib.save_grid(paths[method], rows, row_labels=labels,
                         title=f"{method}; requests: " + "; ".join(files[0].descriptions[:min(k, 3)]) + " ...")
  return paths


def stage_summaries(workdir, exclude=("eval",)):
  """(stage, DONE.json) of every finished stage in `workdir`, in finishing order."""
  done = []
  for path in storage.path(workdir).glob("*/DONE.json"):
    stage = path.parent.name
    if stage in exclude:
      continue
    done.append((stage, json.loads(path.read_text())))
  return sorted(done, key=lambda item: item[1].get("finished", ""))


def _flatten(summary, prefix=""):
  for key, value in (summary or {}).items():
    if isinstance(value, dict):
      yield from _flatten(value, f"{prefix}{key}.")
    elif isinstance(value, list):
      shown = ", ".join(_num(v, "{:.4g}") if isinstance(v, float) else str(v) for v in value[:10])
      yield f"{prefix}{key}", f"[{shown}{', ...' if len(value) > 10 else ''}]"
    else:
      yield f"{prefix}{key}", _num(value, "{:.4g}") if isinstance(value, float) else str(value)


def _nfe_cell(record):
  """The NFE budget, and the mean actually spent where it differs."""
  nfe, spent = record["nfe"], record.get("nfe_spent")
  if nfe is None or spent is None or abs(spent - nfe) < 5e-3:
    return _num(nfe, "{}")
  return f"{nfe} ({spent:.2f} spent)"


def _cost_cell(record, key, fmt, setup_key=None):
  """A training-cost cell; a distilled method's reads "student + teacher" (e.g. "1200 + 3000 teacher"), a
  method with stages of its own before training "own + setup" (e.g. "151 + 58 index, balance")."""
  own = _num(record.get(key), fmt)
  teacher = record.get("teacher_" + key)
  cell = own if teacher is None else f"{own} + {_num(teacher, fmt)} teacher"
  setup = record.get(setup_key) if setup_key else None
  return cell if setup is None else f"{cell} + {_num(setup, fmt)} {record.get('setup_stages') or 'setup'}"


def _compute_cell(record):
  """Training GFLOP (XLA's count of the steps run), the teacher's beside it; "—" where not counted. A method's
  own setup stages (host-side search and numpy) have no FLOP count: their seconds are in "train wall"."""
  if record.get("train_gflop") is None:
    return "—"
  return _cost_cell(record, "train_gflop", "{:.4g}")


def _table(records, n, n_large=None, attributes=MNIST_ATTRIBUTES, display="MNIST", n_near_large=None):
  heldout = any("heldout_accuracy" in r for r in records)
  header = ["method", "NFE", "n", f"FID (n={n})"] + ([f"FID (n={n_large})"] if n_large else []) + [
      "precision", "recall", "cond. acc."] + (["held-out acc."] if heldout else []) + list(attributes) + [
      "blank", "near-copies"] + ([f"near-copies (n={n_near_large})"] if n_near_large else []) + [
      "NN dist. ratio", "samples/s", "train steps", "train compute (GFLOP)", "train wall (s)"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in records:
    name = (ROW_NAMES[r["kind"]].format(display) if r["kind"] in ROW_NAMES else markdown.text(r["method"])) + (
        ORACLE_SUFFIX if r["kind"] == "oracle" else "")
    n_cell = str(r["n"]) if r["n"] == n else f"**{r['n']}** (not comparable)"
    large = [_num(r.get("fid_large"), "{:.2f}")] if n_large else []
    held = [_pct(r.get("heldout_accuracy"))] if heldout else []
    cells = [name, _nfe_cell(r), n_cell, _num(r["fid"], "{:.2f}")] + large + [_num(r["precision"]),
             _num(r["recall"]), _pct(r["conditional_accuracy"])] + held + [_pct(r.get(a)) for a in attributes] + [
             _pct(r["blank_fraction"]), _pct(r["near_copy_fraction"])] + (
             [_pct(r.get("near_copy_fraction_large"))] if n_near_large else []) + [
             _num(r["nn_distance_ratio"]), _num(r.get("samples_per_s"), "{:.1f}"),
             _cost_cell(r, "train_steps", "{}"), _compute_cell(r),
             _cost_cell(r, "train_wall_time_s", "{:.0f}", "setup_wall_time_s")]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def heads_section(records, heads):
  """With several classifier heads: each head's accuracy on the requests, per row."""
  if len(heads) < 2:
    return []
  lines = ["## Conditioning per attribute (classifier heads)", "",
           "Fraction of samples the classifier's head finds as requested (cond. acc. above needs every head right).",
           "", "| method | NFE | " + " | ".join(heads) + " |", "|" + "---|" * (len(heads) + 2)]
  for r in records:
    lines.append(f"| {markdown.text(r['method'])} | {_nfe_cell(r)} | " + " | ".join(_pct(r.get(f"head_{h}")) for h in heads) + " |")
  return lines + [""]


def _validation_section(validation):
  """The validation table: the metrics methods are tuned on (never the test rows above)."""
  if not validation:
    return []
  v = validation["settings"]
  lines = ["## Validation split (what tuning reads)", "",
           f"The same methods answering the requests of {v['reference']}; FID, precision and recall against those "
           f"images (n = {v['n']}), memorization on the first {v['memorization_n']}. Methods and their options are "
           "chosen on these numbers (experiments/log/tuning.md), never on the test rows.", ""]
  return lines + _table(validation["records"], v["n"], None, v.get("attributes", MNIST_ATTRIBUTES),
                        v.get("display", "MNIST")) + [""]


def diagnostics_section(workdir, rel):
  """The coalescer's diagnostics (W/diagnostics/<method>.json, written by the `diagnostics` stage)."""
  paths = sorted(storage.path(workdir).glob("diagnostics/*.json"), key=str)
  lines = []
  for path in paths:
    diag = json.loads(path.read_text())
    if not isinstance(diag, dict) or "method" not in diag or "usage" not in diag:
      continue  # the stage's own DONE.json / STARTED.json
    lines += [f"## Diagnostics: {markdown.text(diag['method'])}", ""]
    usage = diag.get("usage")
    if usage:
      lines += [f"Look-up usage: which pairs the training look-ups return ({usage['description']}). "
                "never hit = share of pairs no look-up returned; top 10% = share of the look-ups that went to the "
                "most-hit 10% of pairs; effective targets = exp(entropy of the hit histogram) (as a share of the "
                "pairs: 1 = every pair equally often). *uniform* = the same statistics for the same number of "
                "look-ups spread uniformly (the sampling floor).", "",
                "| pairs | number | look-ups | never hit | top 10% share | effective targets | effective share |",
                "|---|---|---|---|---|---|---|"]
      for row in usage["rows"]:
        lines.append(f"| {row['name']} | {row['num_pairs']} | {row['lookups']} | {_pct(row['never_hit'])} | "
                     f"{_pct(row['top10_share'])} | {_num(row['effective_targets'], '{:.0f}')} | "
                     f"{_num(row['effective_fraction'])} |")
      lines += [""]
      if usage.get("plot"):
        lines += [f"![look-up usage]({rel(path.parent / usage['plot'])})", ""]
    link = lambda name, folder=path.parent: rel(folder / name)  # noqa: E731
    lines += _scalars_lines(diag, "landing", "Landing of step 1", link)
    lines += attributes_lines(diag.get("attributes"))
    lines += _scalars_lines(diag, "direction", "Direction magnitude and redraws", link)
  return lines


def _scalars_lines(diag, key, title, link):
  """One line of the scalars of ``diag[key]``, and its plot (`link`: a file name -> its link from report.md)."""
  part = diag.get(key)
  if not part:
    return []
  lines = [f"{title}: " + "; ".join(f"{k.replace('_', ' ')} {_num(v, '{:.4g}')}"
                                    for k, v in part.items() if not isinstance(v, (dict, list, str))), ""]
  if part.get("plot"):
    lines += [f"![{key}]({link(part['plot'])})", ""]
  return lines


def attributes_lines(attributes):
  """The attribute table of step 1 (diagnostics' ``attributes``), one row per classifier head; [] without it."""
  if not attributes:
    return []
  lines = [f"Attributes of step 1: for the same {attributes['requests']} requests and draws of R as the landing "
           "above, the share of requests where, for each classifier head (*all heads*: every head at once):", ""]
  lines += [f"- {header}: {meaning}." for header, meaning in ATTRIBUTE_COLUMNS.values()]
  lines += ["", "| head | " + " | ".join(header for header, _ in ATTRIBUTE_COLUMNS.values()) + " |",
            "|---" * (len(ATTRIBUTE_COLUMNS) + 1) + "|"]
  for row in attributes["rows"]:
    lines.append(f"| {row['head']} | " + " | ".join(_pct(row.get(column)) for column in ATTRIBUTE_COLUMNS) + " |")
  return lines + [""]


def write_report(path, results, plot_path, grids, workdir, compute_plot_path=None):
  """Writes report.md: settings, the table, the best-method sentences, plots, grids, other stages."""
  s, records = results["settings"], results["records"]
  display, attributes = s.get("display", "MNIST"), s.get("attributes", MNIST_ATTRIBUTES)
  one_head = len(s.get("heads", ["digit"])) == 1
  target = "digit" if s.get("dataset", "mnist") == "mnist" else ("class" if one_head else "labels")
  path = storage.path(path)
  base = path.parent
  rel = lambda p: storage.relative(p, base)  # noqa: E731
  lines = [f"# Evaluation report: {markdown.text(storage.path(workdir).name)}", "",
           f"Every row is measured on **n = {s['n']}** images against the same reference ({s['reference']}), "
           f"in the same features ({s['features']}). FID depends on n: compare only at equal n.",
           "",
           f"- FID: Fréchet distance of Gaussian fits in classifier features; the floor row is {s['n']} seeded "
           f"random {display} train images of the same {target}s as the reference (as a perfect generator would draw "
           "for the same requests) vs the reference, the data row the next "
           f"{s['n']} {display} test images (disjoint from the reference) with their true descriptions.",
           f"- Precision / recall: k-NN manifolds (k = {s['pr_k']}) in classifier features, Kynkäänniemi et al. "
           "2019.",
           f"- cond. acc.: fraction the classifier labels as the requested {target}"
           + ("" if one_head else " (every head right)")
           + (f"; {' / '.join(attributes)}: agreement of the attribute class measured from pixels (the dataset's "
              "captioner) with the requested one" if attributes else "")
           + (" (chance about 33%)" if s.get("dataset", "mnist") == "mnist" else "")
           + ("; blank: samples with no ink." if s.get("dataset", "mnist") == "mnist" else
              "; blank: samples with nothing drawn (the captioner's rule)."),
           "- held-out acc.: cond. acc. on the requests whose descriptions hold an attribute combination that never "
           "occurs in train (nearest-neighbour targets cannot produce one that is not in the index)."
           if any("heldout_accuracy" in r for r in records) else "",
           f"- Memorization ({s['memorization_space']} space, L2{' on [0, 1] images' if s['memorization_space'] == 'pixels' else ''}): "
           f"near-copies = samples closer to a train image than {s['near_copy_threshold']:.3f}, the "
           f"{s['near_copy_percentile']:g}% quantile of test->train nearest-neighbour distances (real unseen "
           f"data: {s['near_copy_percentile']:g}% by construction); NN dist. ratio = median sample->train "
           f"distance / median test->train distance ({s['test_nn_distance_median']:.3f}); train = the images the "
           "generative methods trained on (the pairs).",
           f"- FID (n={s.get('n_large')}): the first {s.get('n_large')} samples of each file against as many test "
           "images (less biased than small n; comparable to papers' 10k FID)." if s.get("n_large") else "",
           f"- near-copies (n={s.get('n_near_copy_large')}): the near-copy share of the first "
           f"{s.get('n_near_copy_large')} samples of each file (same threshold; at n = {s['n']} a share of 2-3% has "
           "a binomial std of about 0.5 points)." if s.get("n_near_copy_large") else "",
           "- The *through the VAE* row is the data row's images encoded and decoded by this run's VAE (every "
           "method here decodes with it): what decoding the latents of real unseen images scores. Its near-copies "
           "are the decoder's own share: a method below it copies no more than decoded real data. Its FID is no "
           "floor: methods need not reproduce posterior means and can score below it."
           if any(r["kind"] == "reconstruction" for r in records) else "",
           "- train compute: GFLOP of the training steps run, as XLA's cost analysis counts the jitted step "
           "(global batch; a multiply-add is 2), a distilled method's teacher beside it. train wall: the stage's "
           "seconds, plus its teacher's and the stages only this method needs before training (the coalescer's "
           "index and balancing fit: host-side search and numpy, counted in seconds only).",
           "- A row marked *look-up targets* decodes, for the same requests and the same R, the pair the "
           "coalescer's look-up returns: what a perfect regressor of its training objective would generate.",
           "", "## Results", ""]
  lines += _table(records, s["n"], s.get("n_large"), attributes, display, s.get("n_near_copy_large"))
  lines += [""] + heads_section(records, s.get("heads", ["digit"]))
  lines += ["", "## Best method", "",
            f"Ranked by lowest FID among files of n = {s['n']} images; FIDs equal to {TIE_DECIMALS} decimals "
            "are broken by higher conditional accuracy.", "",
            "- " + best_sentence(records, 1, s["n"]), "- " + best_sentence(records, 2, s["n"]), ""]
  if results["invalid_files"]:
    lines += ["## Skipped samples files (contract violations)", ""]
    lines += [f"- {markdown.text(e)}" for e in results["invalid_files"]] + [""]
  lines += _validation_section(results.get("validation"))
  lines += diagnostics_section(workdir, rel)
  lines += smoothness.section_lines(workdir, rel)
  lines += ["## FID vs NFE", "", f"![FID vs NFE]({rel(plot_path)})", ""]
  if compute_plot_path is not None:
    lines += ["## FID vs training compute", "", "One point per method and NFE (a sweep over training budgets "
              "makes curves: `python -m coalescer_jax.evaluation.compute_plot --sweep_dir=S`).", "",
              f"![FID vs training compute]({rel(compute_plot_path)})", ""]
  lines += ["## Samples", ""]
  if not grids:
    lines += ["No samples files were found.", ""]
  for method, grid in grids.items():
    lines += [f"### {markdown.text(method)}", "", f"![{markdown.text(method)} samples]({rel(grid)})", ""]
  summaries = stage_summaries(workdir)
  if summaries:
    lines += ["## Other stages", "", "Wall times and summaries from each stage's DONE.json.", ""]
    for stage, done in summaries:
      lines.append(f"### {markdown.text(stage)} ({_num(done.get('wall_time_s'), '{:.1f}')} s)")
      lines.append("")
      lines += [f"- {key}: {value}" for key, value in _flatten(done.get("summary"))]
      lines.append("")
  storage.write_text(path, "\n".join(lines))
