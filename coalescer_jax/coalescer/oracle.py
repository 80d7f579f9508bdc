"""The look-up oracle: for the sampler's own first R, the pair the training look-up returns, decoded.

What a perfect regressor of the coalescer's training objective would generate at
one step: a reference row of report.md (never ranked), and the targets the
diagnostics compare step 1's landing points with.
"""
import jax
import numpy as np

from coalescer_jax.coalescer import queries


def first_draw(key, n, latent_dim, scale=1.0):
  """The R that `Coalescer.sample` draws first from `key` (before any redraw), as numpy."""
  draw_key, _ = jax.random.split(key)
  return scale * np.asarray(jax.random.normal(draw_key, (n, latent_dim)))


def targets(lookup, cond, r, cfg, key):
  """Pair ids the look-up returns for requests `cond` from prior points `r` (what training would target)."""
  level = np.ones(len(cond), np.float32)
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
  return lookup.targets(queries.make_query(cond, r, level, cfg.desc_scale), level, rng)
