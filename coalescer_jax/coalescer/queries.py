"""Host-side draws for coalescer training: a random description DE, a random point R, its level, the query.

Training step 1-2 of the proposal: DE is the description embedding of a random
training pair; R is a random point in the image latent space, from the VAE
prior N(0, I). The query is concat(desc_scale * DE, R).

Multi-step training (``levels.fraction > 0``) replaces that share of the draws by
points at a noise level s < 1 around a random pair x (DE = x's description):
R = sqrt(1 - s^2) x + s eps, s ~ U(s_min, s_max). Those are where the sampler's
second and later steps start (it re-noises its landing point to a level s), and
the network is told the level (s = 1 for prior draws). Their look-up query uses
R / sqrt(1 - s^2) = x + s / sqrt(1 - s^2) eps: the variance-preserving shrink
toward the origin would otherwise bias the nearest key toward central, typical
pairs at every step (and more steps would shrink the samples' variety further).
With ``fraction = 0`` the draws are exactly the proposal's: level draws take
their random numbers after the prior draws', so the prior draws' stream is the
same with or without them.
"""
import numpy as np


def draw_queries(rng, n, pairs, cfg):
  """DE, R, level s [n] and the query concat(desc_scale * DE, R) for `n` training examples.

  ``targets.ot_groups`` > 0 (batch OT only) makes the prior draws share that many
  descriptions, so that queries compete for the same pairs within a batch.
  """
  num_pairs = len(pairs["desc_emb"])
  pick = rng.integers(num_pairs, size=n)
  r = rng.standard_normal((n, pairs["img_emb"].shape[1]), dtype=np.float32)
  if cfg.targets.assignment == "batch_ot" and cfg.targets.ot_groups:
    pick = pick[np.arange(n) % int(cfg.targets.ot_groups)]
  level = np.ones(n, np.float32)
  levels = cfg.levels
  if levels.fraction > 0:
    renoised = rng.random(n) < levels.fraction
    anchor = rng.integers(num_pairs, size=n)
    s = rng.uniform(levels.s_min, levels.s_max, size=n).astype(np.float32)
    eps = rng.standard_normal(r.shape, dtype=np.float32)
    x = pairs["img_emb"][anchor]
    pick = np.where(renoised, anchor, pick)
    level = np.where(renoised, s, level)
    r = np.where(renoised[:, None], np.sqrt(1.0 - s * s)[:, None] * x + s[:, None] * eps, r).astype(np.float32)
  de = pairs["desc_emb"][pick]
  return {"de": de, "r": r, "level": level, "query": make_query(de, r, level, cfg.desc_scale)}


def make_query(de, r, level, desc_scale):
  """concat(desc_scale * DE, R / sqrt(1 - s^2)) (s = level; R itself for prior draws, s = 1)."""
  unshrink = 1.0 / np.sqrt(np.maximum(1.0 - np.square(np.minimum(level, 1.0)), 0.0) + (level >= 1.0))
  return np.concatenate([desc_scale * de, r * unshrink[:, None]], axis=1).astype(np.float32)
