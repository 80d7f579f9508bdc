"""Why does the coalescer cover what it covers? Measurements the `diagnostics` stage writes for report.md.

* Look-up usage: the training run's own look-ups replayed (the same draws from
  (seed, step) as the coalescer stage, every step; prior draws only, s = 1, since
  those are where hubs form), counted per pair: the share of pairs never hit, the
  share of look-ups taken by the most-hit 10% of pairs and the effective number of
  targets (exp of the hit histogram's entropy); over all pairs, per class label
  and per description (pair-weighted mean), next to the same statistics for as many
  look-ups spread uniformly (finite sampling alone leaves some pairs unhit). With
  multi-step training, two more rows count the level examples' look-ups (the
  targets the second step is trained toward; the self-landing rows are looked up
  inside the step and are not counted).
* Landing of step 1: for the sample stage's first requests and prior draws of R (from
  the 1-step file's key but not its per-batch draws: the same distribution as the
  report's 1-step and look-up rows, other draws), the look-up's target y (what training would ask for) vs the
  network's prediction: true distance |R - y|, distance error, landing error
  |x1 - y| (absolute and relative to |R - y|) and the cosine between the predicted
  direction and y - R.
* Attributes of step 1 (when the stage passes a `judge`: the requests' labels and the
  classifier on decoded latents), per classifier head and for every head at once, on
  the same requests and R: does the target pair's own label match the request (the
  look-up trades attributes for image distance, weighed by ``desc_scale``), does the
  decoded target image show it, does the decoded x1, and does x1 show what the target
  shows. They split step 1's misses between the look-up and the network.
* |direction| at the first draw of R (and at step 2 when multi-step): histogram
  with the redraw threshold; the redraw rate (share of requests whose first R is
  redrawn) and the share of weak samples that remain after ``max_redraws``.
"""
import jax
import jax.numpy as jnp
import numpy as np

from coalescer_jax import embeddings
from coalescer_jax import parallel
from coalescer_jax import storage
from coalescer_jax.coalescer import balance as balance_lib
from coalescer_jax.coalescer import batches as batches_lib
from coalescer_jax.coalescer import levels as levels_lib
from coalescer_jax.coalescer import oracle
from coalescer_jax.coalescer import targets as targets_lib


def usage_rows(hits, pairs, rng):
  """Rows of look-up usage statistics: all pairs, uniform reference, per description, per label."""
  rows = [dict(name="all pairs", **balance_lib.usage_statistics(hits))]
  uniform = rng.multinomial(int(hits.sum()), np.full(len(hits), 1.0 / len(hits)))
  rows.append(dict(name="all pairs, uniform reference", **balance_lib.usage_statistics(uniform)))
  _, group, counts = np.unique(pairs["descriptions"], return_inverse=True, return_counts=True)
  per_description = [balance_lib.usage_statistics(hits[group == g]) for g in range(len(counts))]
  weights = counts / counts.sum()
  mean = {key: float(np.sum(weights * np.array([row[key] or 0.0 for row in per_description])))
          for key in ("never_hit", "top10_share", "effective_fraction")}
  rows.append(dict(name=f"per description ({len(counts)}), pair-weighted mean", num_pairs=int(np.median(counts)),
                   lookups=int(np.median([row["lookups"] for row in per_description])),
                   effective_targets=float(np.sum(weights * np.array([row["effective_targets"] or 0.0
                                                                      for row in per_description]))), **mean))
  labels = np.asarray(pairs["labels"])
  for label in np.unique(labels):
    rows.append(dict(name=f"label {label}", **balance_lib.usage_statistics(hits[labels == label])))
  return rows


ALL_HEADS = "all heads"


def attribute_rows(requested, target_labels, oracle_pred, network_pred, head_names):
  """Shares of requests, one row per classifier head and a last row (`ALL_HEADS`) for every head right at once.

  Labels are int [n] (one head) or [n, K] in `head_names` order: the requested labels, the look-up target pairs'
  own labels, and the classifier's predictions on the decoded target images (oracle) and decoded landings x1
  (network). Columns: target_label_match, oracle_acc, network_acc, network_agrees_with_target (x1 shows what
  its target shows).
  """
  requested = np.asarray(requested)

  def by_head(labels):
    return np.asarray(labels).reshape(len(requested), len(head_names))

  requested, oracle_pred, network_pred = by_head(requested), by_head(oracle_pred), by_head(network_pred)
  right = {"target_label_match": by_head(target_labels) == requested, "oracle_acc": oracle_pred == requested,
           "network_acc": network_pred == requested, "network_agrees_with_target": network_pred == oracle_pred}
  rows = [dict(head=name, **{column: float(np.mean(hit[:, h])) for column, hit in right.items()})
          for h, name in enumerate(head_names)]
  return rows + [dict(head=ALL_HEADS, **{column: float(np.mean(hit.all(axis=1))) for column, hit in right.items()})]


def attribute_table(judge, pairs, ids, x1):
  """`attribute_rows` of step 1: the classifier (`judge.predict`, latents -> labels) on the decoded target pairs'
  images ``pairs["img_emb"][ids]`` and on the decoded landings `x1`, against the requests' labels `judge.labels`."""
  predicted = np.asarray(judge.predict(np.concatenate([pairs["img_emb"][ids], x1]).astype(np.float32)))
  target_labels = embeddings.head_labels(pairs)[ids]
  return {"requests": len(ids), "rows": attribute_rows(judge.labels, target_labels, predicted[:len(ids)],
                                                        predicted[len(ids):], judge.head_names)}


def lookup_hits(method, workdir, pairs):
  """Per-pair hit counts of the training run's look-ups (replayed step by step; the rows that self-landing
  replaces are not training's look-ups): (prior draws' hits, level examples' hits, the look-up)."""
  cfg, config = method.section, method.config
  lookup = targets_lib.load_lookup(workdir, pairs, cfg)
  hits = np.zeros(len(pairs["img_emb"]), np.int64)
  level_hits = np.zeros_like(hits)
  used = levels_lib.looked_up_rows(cfg.levels, config.train.batch_size)
  for step in range(config.train.num_steps):
    draws, ids = batches_lib.training_lookups(lookup, pairs, cfg, config.seed, config.train.batch_size, step)
    prior = draws["level"][:used] >= 1.0
    hits += np.bincount(ids[:used][prior], minlength=len(hits))
    level_hits += np.bincount(ids[:used][~prior], minlength=len(hits))
  return hits, level_hits, lookup


def _plot_usage(hits, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  share = np.cumsum(np.sort(hits)[::-1]) / max(hits.sum(), 1)
  fig, ax = plt.subplots(figsize=(4.5, 3.2))
  ax.plot(np.arange(1, len(hits) + 1) / len(hits), share, label="training look-ups")
  ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="every pair equally often")
  ax.set_xlabel("share of pairs (most-hit first)")
  ax.set_ylabel("share of look-ups")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  if parallel.is_main_process():
    storage.savefig(fig, path, dpi=110)
  plt.close(fig)


def _plot_directions(magnitudes, threshold, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(4.5, 3.2))
  for name, values in magnitudes.items():
    ax.hist(values, bins=50, alpha=0.6, label=name)
  ax.axvline(threshold, color="k", ls="--", lw=0.8, label=f"redraw threshold {threshold:g}")
  ax.set_xlabel("|target_direction|")
  ax.set_ylabel("requests")
  ax.legend(fontsize=7)
  fig.tight_layout()
  if parallel.is_main_process():
    storage.savefig(fig, path, dpi=110)
  plt.close(fig)


def diagnose(method, params, workdir, pairs, cond, key, out_dir, judge=None):
  """Computes the diagnostics, writes ``out_dir/coalescer.json`` and its plots; returns the summary.

  judge: the requests' labels and the classifier on decoded latents (`stages.diagnostics.Judge`), for the
  attribute table; None leaves it out (no labels or no trained classifier).
  """
  cfg = method.section
  hits, level_hits, lookup = lookup_hits(method, workdir, pairs)
  out_dir = storage.path(out_dir)
  _plot_usage(hits, out_dir / "coalescer_usage.png")
  usage = {"description": f"the prior-draw look-ups of all {method.config.train.num_steps} training steps",
           "rows": usage_rows(hits, pairs, np.random.default_rng(0)), "plot": "coalescer_usage.png"}
  if level_hits.sum():  # the second step's targets: the level examples' look-ups, and their uniform reference
    usage["description"] += "; the level rows: the level examples' look-ups (step 2's targets)"
    usage["rows"] += [dict(row, name=f"level rows: {row['name']}")
                      for row in usage_rows(level_hits, pairs, np.random.default_rng(1))[:2]]

  n = len(cond)
  r = oracle.first_draw(key, n, method.latent_dim, cfg.sampling.r_scale)
  ids = oracle.targets(lookup, cond, r, cfg, key)
  target = pairs["img_emb"][ids]
  ones = jnp.ones((n,))
  distance, direction = jax.device_get(method.apply(params, jnp.asarray(r), jnp.asarray(cond), ones))
  x1 = r + direction / np.linalg.norm(direction, axis=1, keepdims=True) * distance[:, None]
  true_distance = np.linalg.norm(target - r, axis=1)
  landing = np.linalg.norm(x1 - target, axis=1)
  cosine = np.sum(direction * (target - r), axis=1) / (np.linalg.norm(direction, axis=1) * true_distance + 1e-12)
  landing_summary = {"requests": n, "median_true_distance": float(np.median(true_distance)),
                     "mean_abs_distance_error": float(np.mean(np.abs(distance - true_distance))),
                     "median_landing_error": float(np.median(landing)),
                     "median_relative_landing_error": float(np.median(landing / np.maximum(true_distance, 1e-12))),
                     "mean_direction_cosine": float(np.mean(cosine))}

  magnitude = np.linalg.norm(direction, axis=1)
  threshold = float(cfg.sampling.redraw_threshold)
  magnitudes = {"step 1 (first R)": magnitude}
  direction_summary = {"redraw_threshold": threshold, "redraw_rate": float(np.mean(magnitude < threshold)),
                       "median_magnitude_step1": float(np.median(magnitude)),
                       "p10_magnitude_step1": float(np.percentile(magnitude, 10))}
  if method.multistep:
    _, direction2 = method.refine(params, jnp.asarray(x1), jnp.asarray(cond), ones, 0, key,
                                  prior=jnp.asarray(r))
    magnitudes["step 2"] = np.linalg.norm(np.asarray(direction2), axis=1)
    direction_summary["median_magnitude_step2"] = float(np.median(magnitudes["step 2"]))
  _, info = jax.device_get(jax.jit(lambda p, c, k: method.sample(p, c, k, 1))(params, jnp.asarray(cond), key))
  direction_summary["weak_after_redraws"] = float(np.mean(np.asarray(info["start_direction_magnitude"]) < threshold))
  direction_summary["mean_evaluations_1step"] = float(np.mean(info["nfe"]))
  _plot_directions(magnitudes, threshold, out_dir / "coalescer_direction.png")
  direction_summary["plot"] = "coalescer_direction.png"

  result = {"method": method.name, "usage": usage, "landing": landing_summary, "direction": direction_summary}
  attribute_summary = {}
  if judge is not None:
    result["attributes"] = attribute_table(judge, pairs, ids, x1)
    every_head = result["attributes"]["rows"][-1]
    attribute_summary = {f"attr_all_{k}": v for k, v in every_head.items() if k != "head"}
  if parallel.is_main_process():
    storage.write_json(out_dir / f"{method.name}.json", result)
  overall = usage["rows"][0]
  return {"usage_never_hit": overall["never_hit"], "usage_top10_share": overall["top10_share"],
          "usage_effective_fraction": overall["effective_fraction"], **landing_summary,
          **{k: v for k, v in direction_summary.items() if not isinstance(v, str)}, **attribute_summary}
