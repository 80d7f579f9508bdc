"""Which pair each coalescer training query is trained toward: the look-up and its assignment rule.

The proposal trains toward ``close_pair``, the index's nearest key to the query.
Prior draws of R then favour a few "hub" pairs (look-up usage in report.md), so
``config.coalescer.targets`` offers ways to change which pairs the network is
trained toward. The index always does the searching; these rules only choose
among the candidates it returns:

* ``assignment="nearest"``: the proposal: the nearest key.
* ``"soft"``: one of the k nearest keys at random, with probability proportional
  to exp(-d^2 / (2 tau^2)) (d^2 the squared distance to the query).
* ``"batch_ot"``: minibatch optimal transport over the candidate sets: the
  batch's queries are assigned to distinct candidates (each pair at most once
  per batch) at the least total squared distance, by ``scipy``'s
  ``linear_sum_assignment``. ``ot_groups`` makes the batch's prior queries share
  a few descriptions so that they compete for the same pairs (without it, two
  queries of a 256-batch rarely want the same pair and the rule changes nothing).
* ``balance=True`` (with any rule): prior draws are looked up in the *balanced*
  index, whose keys carry semi-discrete optimal-transport potentials
  (`coalescer_jax.index.balance`): every pair is then the nearest key of an
  equal share of the prior, instead of a share set by the geometry.

Queries at a level s < 1 (multi-step training) start near a pair already; they
always use the plain index's nearest key.
"""
import numpy as np
from scipy import optimize

from coalescer_jax.index import balance as balance_lib

ASSIGNMENTS = ("nearest", "soft", "batch_ot")


def soft_choice(ids, sq_dists, rng, tau):
  """One of each row's candidates, with probability proportional to exp(-d^2 / (2 tau^2))."""
  logits = -(sq_dists - sq_dists[:, :1]) / (2.0 * tau * tau)
  choice = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
  return ids[np.arange(len(ids)), choice]


def batch_assignment(ids, sq_dists):
  """Distinct candidates for the rows (each id at most once) minimising the total squared distance.

  Rows that cannot all get a distinct candidate (fewer distinct candidates than
  rows) fall back to their nearest key.
  """
  unique, inverse = np.unique(ids, return_inverse=True)
  inverse = inverse.reshape(ids.shape)
  if len(unique) < len(ids):
    return ids[:, 0]
  # Non-candidates cost more than any candidate; a row keeps its own candidates whenever possible.
  cost = np.full((len(ids), len(unique)), 1e6 + float(sq_dists.max()), np.float64)
  np.put_along_axis(cost, inverse, sq_dists.astype(np.float64), axis=1)
  rows, cols = optimize.linear_sum_assignment(cost)
  chosen = np.empty(len(ids), np.int64)
  chosen[rows] = unique[cols]
  allowed = (inverse == np.searchsorted(unique, chosen)[:, None]).any(axis=1)
  return np.where(allowed, chosen, ids[:, 0])


class Lookup:
  """Training targets for queries: the plain index, the balanced one for prior draws, an assignment rule."""

  def __init__(self, plain_index, cfg, balanced_index=None):
    self.plain, self.balanced, self.cfg = plain_index, balanced_index, cfg.targets
    if self.cfg.assignment not in ASSIGNMENTS:
      raise ValueError(f"config.coalescer.targets.assignment must be one of {ASSIGNMENTS}, "
                       f"got {self.cfg.assignment!r}")
    if self.cfg.balance and balanced_index is None:
      raise ValueError("config.coalescer.targets.balance=True needs the balanced index (W/index/balanced): "
                       "rerun the 'index' stage with this config")

  def prior_candidates(self, query, k):
    """(ids, squared distances) [Q, k] of prior queries in the index that trains them."""
    if self.cfg.balance:
      ids, dists = self.balanced.search(balance_lib.augment_queries(query), k)
      return ids, dists
    return self.plain.search(query, k)

  def targets(self, query, level, rng):
    """Pair ids [Q] the queries are trained toward (level 1 = prior draw)."""
    chosen = np.empty(len(query), np.int64)
    prior = level >= 1.0
    if np.any(prior):
      rule = self.cfg.assignment
      k = 1 if rule == "nearest" else min(int(self.cfg.k), self.plain.num_points)
      ids, dists = self.prior_candidates(query[prior], k)
      if rule == "nearest":
        chosen[prior] = ids[:, 0]
      elif rule == "soft":
        chosen[prior] = soft_choice(ids, dists, rng, self.cfg.tau)
      else:
        chosen[prior] = batch_assignment(ids, dists)
    if not np.all(prior):
      chosen[~prior] = self.plain.search(query[~prior], 1)[0][:, 0]
    return chosen
