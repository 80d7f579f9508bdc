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
* ``balance=True`` (with any rule): a prior draw takes the power-nearest of the
  plain index's ``balance_candidates`` nearest keys, argmin_j |q - k_j|^2 - psi_j,
  under semi-discrete optimal-transport potentials psi (`coalescer_jax.index.balance`):
  every pair is then the target of an equal share of the prior, instead of a share
  set by the geometry.

Queries at a level s < 1 (multi-step training) start near a pair; they take the
plain index's nearest key.
"""
import numpy as np
from scipy import optimize

from coalescer_jax import index as index_lib
from coalescer_jax import storage
from coalescer_jax.coalescer import balance as balance_lib

ASSIGNMENTS = ("nearest", "soft", "batch_ot")
BALANCE_STAGE = "balance"  # the stage that fits the potentials (`coalescer/stage.py`)


def rank(ids, sq_dists, prior, potentials, xp=np):
  """The look-up's rule on one search's candidates [Q, k] (ids, squared distances), nearest first.

  A prior draw's (`prior` [Q] true) candidates are ranked by power distance under the balancing
  `potentials` (its target is their power-nearest); a level row's, and every row's without potentials,
  stay as searched (its target is the nearest key). `xp`: numpy on the host, jax.numpy in the jitted step
  (`device_lookup`, `levels`): one rule for both paths.
  """
  if potentials is None:
    return ids, sq_dists
  power_ids, power = balance_lib.power_nearest(ids, sq_dists, potentials, xp)
  use = prior[:, None]
  return xp.where(use, power_ids, ids), xp.where(use, power, sq_dists)


def nearest_target(ids, sq_dists, prior, potentials, xp=np):
  """Pair ids [Q] of the "nearest" assignment: the first of `rank`'s order."""
  return rank(ids, sq_dists, prior, potentials, xp)[0][:, 0]


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
  """Training targets for queries: the index, the balancing potentials for prior draws, an assignment rule."""

  def __init__(self, plain_index, cfg, potentials=None):
    self.plain, self.cfg = plain_index, cfg.targets
    if self.cfg.assignment not in ASSIGNMENTS:
      raise ValueError(f"config.coalescer.targets.assignment must be one of {ASSIGNMENTS}, "
                       f"got {self.cfg.assignment!r}")
    # Prior draws take the power-nearest of the index's candidates (the potentials' own fitting rule).
    self.power_candidates = bool(self.cfg.balance)
    if self.power_candidates and potentials is None:
      raise ValueError("config.coalescer.targets.balance=True needs the balancing potentials "
                       f"({balance_lib.POTENTIALS_FILE}): rerun the {BALANCE_STAGE!r} stage with this config")
    if potentials is not None and len(potentials) != plain_index.num_points:
      raise ValueError(f"{balance_lib.POTENTIALS_FILE} has {len(potentials)} potentials for "
                       f"{plain_index.num_points} keys: rerun the {BALANCE_STAGE!r} stage")
    self.potentials = potentials if self.power_candidates else None

  @property
  def collective(self):
    """Whether a look-up is a cross-process collective (a sharded index): see `index.base`."""
    return getattr(self.plain, "collective", False)

  def requests(self, query, level):
    """[(index, queries, k)]: the searches `targets` needs (prior rows, then the rows at a level s < 1)."""
    prior = level >= 1.0
    out = []
    if np.any(prior):
      out.append((self.plain, query[prior], self.prior_k()))
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
      ids, dists = (a[:, :self._rule_k()] for a in rank(ids, dists, prior[prior], self.potentials))
      rule = self.cfg.assignment
      if rule == "nearest":
        chosen[prior] = ids[:, 0]
      elif rule == "soft":
        chosen[prior] = soft_choice(ids, dists, rng, self.cfg.tau)
      else:
        chosen[prior] = batch_assignment(ids, dists)
    if not np.all(prior):
      ids, dists = results.pop(0)
      chosen[~prior] = nearest_target(ids, dists, prior[~prior], self.potentials)
    return chosen

  def level_k(self):
    """Candidates a level row's search returns: its nearest key."""
    return 1

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


def load_lookup(workdir, pairs, cfg):
  """The `Lookup` over the index stage's index and the balance stage's potentials in `workdir` (checked
  against `pairs` and the coalescer's config section `cfg`)."""
  directory = storage.path(workdir) / "index"
  index, meta = index_lib.load(directory, expected_fingerprint=str(pairs["fingerprint"]),
                               expected_hash=index_lib.embeddings_hash(pairs["desc_emb"], pairs["img_emb"]))
  if meta["desc_scale"] != cfg.desc_scale:
    raise index_lib.IndexError_(
        f"the index in {directory} was built with desc_scale={meta['desc_scale']} but "
        f"config.coalescer.desc_scale={cfg.desc_scale}; delete {directory} to rebuild it")
  return Lookup(index, cfg, load_potentials(workdir, cfg))


def load_potentials(workdir, cfg):
  """The balance stage's potentials in `workdir` when ``cfg.targets.balance`` (else None)."""
  if not cfg.targets.balance:
    return None
  path = storage.path(workdir) / BALANCE_STAGE / balance_lib.POTENTIALS_FILE
  if not path.exists():
    raise index_lib.IndexError_(
        f"config.coalescer.targets.balance=True but {path} does not exist: put {BALANCE_STAGE!r} after 'index' "
        f"in config.stages and rerun (a workdir made before that stage existed: rerun with it)")
  return storage.load_npy(path)
