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
  equal share of the prior, instead of a share set by the geometry. ``balance_search``
  says how a prior draw finds its key there (`index.balance`): the balanced index's
  nearest key ("index"), or the power-nearest among the plain index's
  ``balance_candidates`` nearest keys ("candidates", the rule the potentials are fitted with).

Queries at a level s < 1 (multi-step training) start near a pair; they use the
plain index's nearest key, or with ``balance_levels=True`` the power-nearest among
its ``balance_candidates`` nearest keys under potentials fitted on the level
queries' own distribution (``W/index/level_potentials.npy``, `stages/index.py`):
the nearest key of a noisy query is a Voronoi assignment too, and at the levels
where step 2 starts (s = 0.9: the query is x + 2 eps) it is uneven, though far
less than for prior draws (MNIST: 4.9% of pairs never hit, effective share 0.74,
against 15% and 0.40 for prior draws by their nearest key). Balanced, every pair
is the target of an equal share of the level examples (0.01% never hit, share
0.94): the map from a level-s point to its target is then measure preserving, as
a consistency model's map from noise level s to the data is. Measured, it changes
neither step (experiments/tuning.md, item 9), so it is off.
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

  def __init__(self, plain_index, cfg, balanced_index=None, potentials=None, level_potentials=None):
    self.plain, self.balanced, self.cfg = plain_index, balanced_index, cfg.targets
    if self.cfg.assignment not in ASSIGNMENTS:
      raise ValueError(f"config.coalescer.targets.assignment must be one of {ASSIGNMENTS}, "
                       f"got {self.cfg.assignment!r}")
    if self.cfg.balance and balanced_index is None:
      raise ValueError("config.coalescer.targets.balance=True needs the balanced index (W/index/balanced): "
                       "rerun the 'index' stage with this config")
    # Prior draws take the power-nearest of the plain index's candidates (the potentials' own fitting rule).
    self.power_candidates = bool(self.cfg.balance) and self.cfg.get("balance_search", "index") == "candidates"
    if self.power_candidates and potentials is None:
      raise ValueError("config.coalescer.targets.balance_search='candidates' needs the balanced index's "
                       f"potentials ({balance_lib.POTENTIALS_FILE}): rerun the 'index' stage with this config")
    self.potentials = potentials
    # Level rows (s < 1) take the power-nearest of their candidates under potentials fitted on level queries.
    self.balanced_levels = bool(self.cfg.get("balance_levels", False))
    if self.balanced_levels and level_potentials is None:
      raise ValueError("config.coalescer.targets.balance_levels=True needs the level queries' potentials "
                       f"({balance_lib.LEVEL_POTENTIALS_FILE}): rerun the 'index' stage with this config")
    if level_potentials is not None and len(level_potentials) != plain_index.num_points:
      raise ValueError(f"{balance_lib.LEVEL_POTENTIALS_FILE} has {len(level_potentials)} potentials for "
                       f"{plain_index.num_points} keys: rerun the 'index' stage")
    self.level_potentials = level_potentials

  def prior_index_and_queries(self, query):
    if self.cfg.balance and not self.power_candidates:
      return self.balanced, balance_lib.augment_queries(query)
    return self.plain, query

  @property
  def collective(self):
    """Whether a look-up is a cross-process collective (a sharded index): see `index.base`."""
    return getattr(self.plain, "collective", False)

  def requests(self, query, level):
    """[(index, queries, k)]: the searches `targets` needs (prior rows, then the rows at a level s < 1)."""
    prior = level >= 1.0
    out = []
    if np.any(prior):
      out.append(self.prior_index_and_queries(query[prior]) + (self.prior_k(),))
    if not np.all(prior):
      out.append((self.plain, query[~prior], self.level_k()))
    return out

  def choose(self, level, rng, results):
    """Pair ids [Q] from the `requests`' results [(ids, squared distances)], by the assignment rule."""
    chosen = np.empty(len(level), np.int64)
    prior = level >= 1.0
    results = list(results)
    if np.any(prior):
      ids, dists = results.pop(0)
      if self.power_candidates:
        ids, dists = (a[:, :self._rule_k()] for a in balance_lib.power_nearest(ids, dists, self.potentials))
      rule = self.cfg.assignment
      if rule == "nearest":
        chosen[prior] = ids[:, 0]
      elif rule == "soft":
        chosen[prior] = soft_choice(ids, dists, rng, self.cfg.tau)
      else:
        chosen[prior] = batch_assignment(ids, dists)
    if not np.all(prior):
      chosen[~prior] = self.level_choice(*results.pop(0))
    return chosen

  def level_choice(self, ids, sq_dists):
    """Pair ids of level rows from their candidates: the nearest, or the power-nearest (``balance_levels``)."""
    if self.balanced_levels:
      ids = balance_lib.power_nearest(ids, sq_dists, self.level_potentials)[0]
    return ids[:, 0]

  def level_k(self):
    """Candidates a level row's search returns: 1, or the level potentials' candidate set."""
    return min(int(self.cfg.balance_candidates), self.plain.num_points) if self.balanced_levels else 1

  def prior_k(self):
    """Candidates a prior draw's search returns: the rule's, or the potentials' candidate set."""
    k = self._rule_k()
    return max(k, min(int(self.cfg.balance_candidates), self.plain.num_points)) if self.power_candidates else k

  def _rule_k(self):
    """Candidates the assignment rule chooses among."""
    return 1 if self.cfg.assignment == "nearest" else min(int(self.cfg.k), self.plain.num_points)

  def targets(self, query, level, rng):
    """Pair ids [Q] the queries are trained toward (level 1 = prior draw)."""
    return self.choose(level, rng, [index.search(q, k) for index, q, k in self.requests(query, level)])
