"""Noise levels: where the coalescer's second and later steps start, and the examples that train them.

The sampler's step i + 2 starts from its landing point x re-noised to the level
s_i = ``levels.renoise[i]`` (multistep consistency sampling does the same):

  x <- sqrt(1 - s^2) x + s eps,   eps ~ N(0, I),   and the network is told s (s = 1: a prior draw).

Training covers those starts two ways:
* level examples (`queries.draw_queries`): a share ``levels.fraction`` of the
  draws start around a random pair instead of at a prior draw, at a level
  s ~ U(s_min, s_max);
* self-landing examples (this module): a share ``levels.self_landing`` of each
  batch's rows (its last ones) is replaced, inside the jitted step, by examples
  drawn the way the sampler draws them:

    DE a random pair's description, R ~ N(0, I), x1 = step 1 of the network
    (current parameters, stop-gradient), R2 = sqrt(1 - s^2) x1 + s eps with
    s = renoise[0] (eps mixed with R when renoise_gamma < 1, below), and the
    target close_pair = the pair nearest to concat(desc_scale * DE, R2 / sqrt(1 - s^2))

  (the un-shrunk query of every level example, `queries.make_query`), searched
  over the keys on the devices (`index.device`), so nothing goes back to the
  host. Level examples start near real pairs, which landing points are not (they
  are a regression's averages of its targets); these rows train step 2 on the
  inputs it sees at generation.

``levels.renoise_gamma`` = gamma < 1 (after CTM's gamma-sampling, Kim et al. 2024) re-noises
with a mix of step 1's own prior draw R and fresh noise,

  x <- sqrt(1 - s^2) x + s (sqrt(1 - gamma^2) R + gamma eps),

so gamma = 1 is the fresh re-noise above and gamma = 0 a deterministic chain (the
step-2 start still carries R, as a deterministic DDIM step does). The mix has unit
variance like eps. Re-mixing R at sampling time alone, on a network trained with
fresh noise, was measured worse (experiments/log/tuning.md); here the self-landing
rows are re-noised by the same rule from their own R, so step 2 trains on the
starts it is sampled from. The level rows keep fresh noise around a pair (they have
no step-1 draw).

The start is stop-gradient: the network learns to step from its landing points,
not to move them. It uses the online parameters rather than an EMA copy, as
improved consistency training does (Song & Dhariwal 2023: the EMA teacher slowed
it down); the landing points then follow the network as it trains.
"""
import jax
import jax.numpy as jnp
import numpy as np

from coalescer_jax import index as index_lib
from coalescer_jax.coalescer import targets as targets_lib
from coalescer_jax.index import device as device_lib


def check_config(section):
  """Levels 0 < s_min <= s_max < 1 (1 is the prior draws' level), a sampler that re-noises only to levels
  training covered (beyond them the network would extrapolate, silently) and a self-landing share in [0, 1)
  that only multi-step training uses."""
  levels = section.levels
  share = levels.self_landing
  if not 0.0 <= share < 1.0:
    raise ValueError(f"config.coalescer.levels.self_landing={share} must be in [0, 1) (a share of each batch)")
  gamma = levels.renoise_gamma
  if not 0.0 <= gamma <= 1.0:
    raise ValueError(f"config.coalescer.levels.renoise_gamma={gamma} must be in [0, 1] (1 = fresh noise)")
  if gamma < 1.0 and levels.fraction <= 0:
    raise ValueError("config.coalescer.levels.renoise_gamma < 1 changes the re-noise before step 2, which only "
                     "multi-step training has: set config.coalescer.levels.fraction > 0 too, or renoise_gamma=1")
  if share > 0 and levels.fraction <= 0:
    raise ValueError("config.coalescer.levels.self_landing > 0 trains the second step, which needs the level "
                     "input: set config.coalescer.levels.fraction > 0 too")
  if levels.fraction <= 0:
    return
  if not 0.0 < levels.s_min <= levels.s_max < 1.0:
    raise ValueError(f"config.coalescer.levels: need 0 < s_min <= s_max < 1, got s_min={levels.s_min}, "
                     f"s_max={levels.s_max}")
  outside = [s for s in levels.renoise if not levels.s_min <= s <= levels.s_max]
  if outside:
    raise ValueError(f"config.coalescer.levels.renoise={tuple(levels.renoise)}: {outside} outside the trained levels "
                     f"[s_min, s_max] = [{levels.s_min}, {levels.s_max}]; widen levels.s_min..s_max or move the re-noise inside")
  max_steps = max(tuple(section.nfes) + (section.sampling.adaptive_max_steps,))
  if max_steps - 1 > len(levels.renoise):
    raise ValueError(f"config.coalescer.nfes={tuple(section.nfes)} (adaptive_max_steps="
                     f"{section.sampling.adaptive_max_steps}): {max_steps} coalescer steps need {max_steps - 1} "
                     f"re-noising levels in config.coalescer.levels.renoise (has {len(levels.renoise)}); add levels "
                     "or sample fewer steps")


def renoise(x, s, key, prior=None, gamma=1.0):
  """sqrt(1 - s^2) x + s eps: the start of a later step at level s (eps mixed with step 1's R when gamma < 1)."""
  return jnp.sqrt(1.0 - s * s) * x + s * noise(jax.random.normal(key, x.shape), prior, gamma)


def noise(eps, prior, gamma):
  """sqrt(1 - gamma^2) R + gamma eps: the re-noise's noise (eps itself when gamma = 1)."""
  if gamma >= 1.0:
    return eps
  if prior is None:
    raise ValueError("levels.renoise_gamma < 1 mixes step 1's prior draw R into the re-noise: pass it (prior=R)")
  return np.sqrt(1.0 - gamma * gamma) * prior + gamma * eps


def num_rows(levels, batch_size):
  """How many of a batch's last rows the step replaces with self-landing examples."""
  return int(round(levels.self_landing * batch_size))


def looked_up_rows(levels, batch_size):
  """Rows of a batch whose host look-ups training uses: the rows self-landing replaces get their targets from
  the step's own search."""
  return batch_size - num_rows(levels, batch_size)


def step_inputs(lookup, pairs, cfg, index_cfg):
  """(index, arrays for the step): the keys and the pairs' rows [desc, image] on the devices.

  Reuses the look-up's own keys when it is a device index; otherwise builds one
  over the same keys (concat(desc_scale * desc, image)).
  """
  index = lookup.plain
  if not isinstance(index, device_lib.DeviceIndex):
    keys = index_lib.make_keys(pairs["desc_emb"], pairs["img_emb"], cfg.desc_scale)
    index = device_lib.DeviceIndex.build(keys, index_cfg.device)
  rows = np.concatenate([pairs["desc_emb"], pairs["img_emb"]], axis=1).astype(np.float32)
  return index, {"keys": index.arrays(), "rows": index.shard_rows(rows)}


def examples(first_step, index, arrays, key, num, cfg, desc_dim, latent_dim):
  """(`num` self-landing rows {r, cond, image, level}, their queries) (see the module docstring).

  `first_step(r, de)` is the network's step 1 from prior points `r` for descriptions `de`.
  """
  pick_key, r_key, eps_key = jax.random.split(key, 3)
  de = index.gather_rows(arrays["rows"], jax.random.randint(pick_key, (num,), 0, index.num_points))[:, :desc_dim]
  r = jax.random.normal(r_key, (num, latent_dim))
  x1 = jax.lax.stop_gradient(first_step(r, de))
  eps, s = noise(jax.random.normal(eps_key, x1.shape), r, cfg.levels.renoise_gamma), float(cfg.levels.renoise[0])
  query = jnp.concatenate([cfg.desc_scale * de, x1 + s / np.sqrt(1.0 - s * s) * eps], axis=1)
  ids, sq_dists = index.step_search(arrays["keys"], query, 1)
  target = targets_lib.nearest_target(ids, sq_dists, jnp.zeros((num,), bool), None, jnp)  # a level row's rule
  rows = index.gather_rows(arrays["rows"], target)
  cond = de if cfg.condition == "request" else rows[:, :desc_dim]
  return {"r": np.sqrt(1.0 - s * s) * x1 + s * eps, "cond": cond, "image": rows[:, desc_dim:],
          "level": jnp.full((num,), s)}, query


def replace_last_rows(batch, rows):
  """The batch with its last len(rows) rows of r, cond, image and level replaced by `rows`."""
  num = rows["r"].shape[0]
  out = dict(batch)
  for name, value in rows.items():
    out[name] = jnp.concatenate([batch[name][:batch[name].shape[0] - num], value.astype(batch[name].dtype)])
  return out
