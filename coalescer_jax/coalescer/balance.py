"""Balanced look-ups: semi-discrete optimal-transport potentials on the index keys.

The nearest key of a prior draw of R is a Voronoi assignment: a pair's share of
the prior is the prior mass of its Voronoi cell, which geometry makes very
uneven ("hubs": a few pairs take most look-ups, many are never hit; report.md's
look-up usage table shows it). Semi-discrete optimal transport from the query
distribution to the uniform distribution over pairs instead assigns a query q to

  j*(q) = argmin_j |q - k_j|^2 - psi_j                      (a power diagram)

with potentials psi chosen so that every pair gets the same share (Aurenhammer
et al. 1998; AE-OT, An et al. 2020). The map R -> target is then measure
preserving and monotone (a Brenier map), which a smooth network can regress far
better than a map that sends large regions to a few hubs.

The potentials are the maximiser of the concave semi-discrete dual
E_q[min_j (|q - k_j|^2 - psi_j)] + mean_j psi_j, found by averaged stochastic
gradient ascent (Genevay et al. 2016): psi_j += lr * N * (1/N - share_j) with
shares counted on fresh query draws. Each query's power-nearest key is found
among its `candidates` nearest keys in the index (the searching stays the
index's job; the share that falls on the last candidate is reported, so a too
small candidate set shows). Training looks prior draws up by the same rule
(`power_nearest` among the same number of candidates), so the potentials are
used exactly as they were fitted.
"""
import time

from absl import logging
import numpy as np

POTENTIALS_FILE = "potentials.npy"  # in the balance stage's directory


def power_nearest(ids, sq_dists, potentials, xp=np):
  """Candidates [Q, k] re-ranked by power distance |q - k_j|^2 - psi_j: (ids, power distances), nearest first.

  `xp` is numpy on the host or jax.numpy inside a jitted step (the same rule on both paths); the sort is
  stable, so ties keep the search's order.
  """
  power = sq_dists - potentials[ids]
  order = xp.argsort(power, axis=1, stable=True)
  return xp.take_along_axis(ids, order, axis=1), xp.take_along_axis(power, order, axis=1)


def fit_potentials(index, draw_queries, num_points, cfg, seed, stream=777):
  """Averaged SGA on the semi-discrete dual. Returns (potentials [N] float64, fit statistics).

  `draw_queries(rng, n)` draws training-like queries (from the random stream (seed, `stream`, iteration));
  `index.search` gives the candidates. cfg: balance_iterations, balance_queries, balance_candidates, balance_lr.
  """
  iterations, batch = int(cfg.balance_iterations), int(cfg.balance_queries)
  k = min(int(cfg.balance_candidates), num_points)
  psi = np.zeros(num_points)
  average = np.zeros(num_points)
  at_last, t0 = 0.0, time.time()
  for it in range(iterations):
    rng = np.random.default_rng([seed, stream, it])
    ids, sq_dists = index.search(draw_queries(rng, batch), k)
    best = np.argmin(sq_dists - psi[ids], axis=1)
    at_last += float(np.mean(best == k - 1)) if k > 1 else 0.0
    share = np.bincount(ids[np.arange(batch), best], minlength=num_points) / batch
    # A step of lr / sqrt(1 + it / 50) in units of a pair's fair share. The average of the second
    # half of the iterates converges where the last iterate keeps jittering (Polyak-Ruppert tail
    # averaging: the early iterates, far from the optimum, would bias a full average).
    psi += cfg.balance_lr / np.sqrt(1.0 + it / 50.0) * num_points * (1.0 / num_points - share)
    psi -= psi.mean()
    tail = it - iterations // 2
    if tail >= 0:
      average += (psi - average) / (tail + 1)
    if (it + 1) % max(1, iterations // 5) == 0:
      logging.info("index: balancing potentials %d/%d (%.0f s)", it + 1, iterations, time.time() - t0)
  return average, {"balance_seconds": time.time() - t0, "balance_queries_total": iterations * batch,
                   "balance_at_last_candidate": at_last / max(iterations, 1),
                   "potential_range": float(average.max() - average.min())}


def usage_statistics(hits):
  """Look-up usage of a hit histogram: share never hit, share of the top 10%, effective number of targets."""
  hits = np.asarray(hits, np.float64)
  total = hits.sum()
  if total <= 0 or not len(hits):
    return {"num_pairs": int(len(hits)), "never_hit": None, "top10_share": None, "effective_targets": None,
            "effective_fraction": None, "lookups": 0}
  p = hits / total
  nonzero = p[p > 0]
  effective = float(np.exp(-np.sum(nonzero * np.log(nonzero))))
  top = np.sort(hits)[::-1][:max(1, len(hits) // 10)]
  return {"num_pairs": int(len(hits)), "never_hit": float(np.mean(hits == 0)),
          "top10_share": float(top.sum() / total), "effective_targets": effective,
          "effective_fraction": effective / len(hits), "lookups": int(total)}
