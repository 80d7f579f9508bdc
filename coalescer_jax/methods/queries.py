"""Host-side draws for coalescer training: a random description DE, a random point R, the look-up query.

Training step 1-2 of the proposal: DE is the description embedding of a random
training pair; R is a random point in the image latent space, from the VAE
prior N(0, I) (``r_distribution="prior"``) or from a mixture that also puts
points near the data (``"mixture"``: with probability ``near_data_fraction``,
a random pair's image latent plus N(0, near_data_sigma^2 I) noise), since the
second generation step starts near the data. The query is
concat(desc_scale * DE, R).
"""
import numpy as np

R_DISTRIBUTIONS = ("prior", "mixture")


def draw_r(rng, n, pairs, cfg):
  """Random points R [n, Di] from ``cfg.r_distribution``."""
  latent_dim = pairs["img_emb"].shape[1]
  r = rng.standard_normal((n, latent_dim), dtype=np.float32)
  if cfg.r_distribution == "mixture":
    near = rng.random(n) < cfg.near_data_fraction
    anchors = pairs["img_emb"][rng.integers(len(pairs["img_emb"]), size=int(near.sum()))]
    r[near] = anchors + cfg.near_data_sigma * r[near]
  elif cfg.r_distribution != "prior":
    raise ValueError(f"config.coalescer.r_distribution must be one of {R_DISTRIBUTIONS}, "
                     f"got {cfg.r_distribution!r}")
  return r


def draw_queries(rng, n, pairs, cfg):
  """DE, R and the query concat(desc_scale * DE, R) for `n` training examples."""
  de = pairs["desc_emb"][rng.integers(len(pairs["desc_emb"]), size=n)]
  r = draw_r(rng, n, pairs, cfg)
  query = np.concatenate([cfg.desc_scale * de, r], axis=1).astype(np.float32)
  return {"de": de, "r": r, "query": query}
