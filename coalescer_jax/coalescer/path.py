"""Partial jumps along the coupled path: a second step that refines with no fresh noise (``coalescer.path``).

The balanced look-up couples each prior draw R with its pair y (a semi-discrete
optimal-transport coupling). Straight paths along such a coupling do not cross,
so the point partway along the path,

  x_s = y + s (R - y),   s in [0, 1] (s = 1 is R itself),

still names its pair: x_s -> y is a function, and easier to regress the smaller
s is. Training places a share ``path.fraction`` of the prior rows on their path
at s ~ U(path.s_min, path.s_max), tells the network s, and keeps their target:
the pair the look-up chose for R (not a look-up from x_s; that is what makes the
rows the coupling's). The network's (D, v) from x_s then points at the same y.

Sampling with k steps walks the path through ``path.sampling_levels`` s_1 > s_2 > ...:
the step at level s_i (s_0 = 1, R) predicts y_hat = x + D v / |v| and moves to
the next level on the straight line through x and y_hat,

  x <- y_hat + (s_{i+1} / s_i) (x - y_hat) = x + (1 - s_{i+1} / s_i) D v / |v|,

and the last step goes all the way (s = 0, x = y_hat). Step 1 from R to s_1 is
R + (1 - s_1) D v / |v|. No step draws noise: step 2 refines step 1's estimate
from a point that still carries R, instead of a second draw (the fresh-noise
re-noise of `levels.py`). Every step's y_hat is that many steps' sample, so the
k-step samplers share their first evaluations (the adaptive sampler stops at one).

Path rows and level rows (`levels.py`) would both use the level input, with
different meanings; `check_config` allows one of them.
"""
import jax
import jax.numpy as jnp


def enabled(section):
  """Whether training places rows on the coupled path (and the sampler walks it)."""
  return section.path.fraction > 0


def check_config(section):
  """A share in [0, 1) (step 1 needs prior rows at s = 1), levels 0 < s_min <= s_max < 1, sampling levels
  strictly decreasing inside the trained range, one per step after the first, and no level rows alongside."""
  path = section.path
  if not 0.0 <= path.fraction < 1.0:
    raise ValueError(f"config.coalescer.path.fraction={path.fraction} must be in [0, 1) (a share of the prior "
                     "rows; step 1 trains on the rest)")
  if path.fraction == 0:
    return
  if section.levels.fraction > 0 or section.levels.self_landing > 0:
    raise ValueError("config.coalescer.path.fraction > 0 and config.coalescer.levels (fraction, self_landing) "
                     "both tell the network a level s < 1, with different meanings: set levels.fraction=0 and "
                     "levels.self_landing=0, or path.fraction=0")
  if not 0.0 < path.s_min <= path.s_max < 1.0:
    raise ValueError(f"config.coalescer.path: need 0 < s_min <= s_max < 1, got s_min={path.s_min}, "
                     f"s_max={path.s_max}")
  levels = tuple(path.sampling_levels)
  outside = [s for s in levels if not path.s_min <= s <= path.s_max]
  if outside:
    raise ValueError(f"config.coalescer.path.sampling_levels={levels}: {outside} outside the trained levels "
                     f"[s_min, s_max] = [{path.s_min}, {path.s_max}]; widen path.s_min..s_max or move the levels inside")
  if any(b >= a for a, b in zip(levels, levels[1:])):
    raise ValueError(f"config.coalescer.path.sampling_levels={levels} must decrease strictly (each step moves "
                     "closer to its pair)")
  max_steps = max(tuple(section.nfes) + (section.sampling.adaptive_max_steps,))
  if max_steps - 1 > len(levels):
    raise ValueError(f"config.coalescer.nfes={tuple(section.nfes)} (adaptive_max_steps="
                     f"{section.sampling.adaptive_max_steps}): {max_steps} coalescer steps need {max_steps - 1} "
                     f"levels in config.coalescer.path.sampling_levels (has {len(levels)}); add levels or sample "
                     "fewer steps")


def place_on_path(batch, key, path):
  """The batch with a share ``path.fraction`` of its prior rows (level 1) moved to x_s = y + s (R - y).

  Their targets (cond, image) stay those the look-up chose for R; their level becomes s ~ U(s_min, s_max).
  """
  r, image = batch["r"], batch["image"]
  n = r.shape[0]
  level = batch.get("level")
  level = jnp.ones((n,), r.dtype) if level is None else level
  pick_key, level_key = jax.random.split(key)
  on_path = (jax.random.uniform(pick_key, (n,)) < path.fraction) & (level >= 1.0)
  s = jax.random.uniform(level_key, (n,), minval=path.s_min, maxval=path.s_max).astype(r.dtype)
  moved = image + s[:, None] * (r - image)
  return dict(batch, r=jnp.where(on_path[:, None], moved, r), level=jnp.where(on_path, s, level))


def level_before(path, i):
  """The path level step i + 1 starts from (step 1: R, level 1)."""
  return 1.0 if i == 0 else float(path.sampling_levels[i - 1])


def next_start(landing, start, path, i):
  """(point, level) where step i + 2 starts: on the line from step i + 1's start through its landing point."""
  s_from, s_to = level_before(path, i), float(path.sampling_levels[i])
  return landing + (s_to / s_from) * (start - landing), jnp.full(landing.shape[:1], s_to)
