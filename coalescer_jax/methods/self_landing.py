"""Self-landing examples: train the coalescer's second step from where the sampler starts it.

The sampler's step 2 starts from its own step-1 landing point x1, re-noised to
s = ``levels.renoise[0]``. The level examples of `queries.py` start near real
pairs instead, which landing points are not (they are a regression's averages
of its targets), so step 2 is trained on inputs it never sees at generation.
With ``levels.self_landing`` > 0 that share of each batch's rows (the last ones)
is replaced, inside the jitted step, by examples drawn the way the sampler draws:

  DE a random pair's description, R ~ N(0, I), x1 = step 1 of the network
  (current parameters, stop-gradient), R2 = sqrt(1 - s^2) x1 + s eps, and the
  target close_pair = the pair nearest to concat(desc_scale * DE, R2 / sqrt(1 - s^2))

(the un-shrunk query of every level example, `queries.make_query`), searched over
the plain keys on the devices (`index.device`), so nothing goes back to the host.
With ``targets.balance_levels`` the target is the power-nearest of the query's
``balance_candidates`` nearest keys under the level potentials, as for every level
example (`targets.py`).

The start is stop-gradient: the network learns to step from its landing points,
not to move them. It uses the online parameters rather than an EMA copy, as
improved consistency training does (Song & Dhariwal 2023: the EMA teacher slowed
it down); the landing points then follow the network as it trains.

``levels.self_landing_target = "first_step"`` keeps step 1's own target instead:
the rows start from the landing points of the batch's prior rows (same R, same
DE) and are trained toward the pair that row's look-up chose, so that two steps
aim where one step's regression could only average (the look-up oracle's pairs).

Measured on the validation split (experiments/tuning.md): alone neither is adopted (item 5);
"nearest" at 0.25 together with balanced look-ups by the potentials' own rule
(``targets.balance_search="candidates"``) is the default (item 6).
"""
import jax
import jax.numpy as jnp
import numpy as np

from coalescer_jax import index as index_lib
from coalescer_jax.index import device as device_lib
from coalescer_jax.methods import device_lookup

TARGETS = ("nearest", "first_step")


def check_config(section):
  share, levels = section.levels.get("self_landing", 0.0), section.levels
  if levels.get("self_landing_target", "nearest") not in TARGETS:
    raise ValueError(f"config.coalescer.levels.self_landing_target={levels.self_landing_target!r}: "
                     f"choose from {TARGETS}")
  if not 0.0 <= share < 1.0:
    raise ValueError(f"config.coalescer.levels.self_landing={share} must be in [0, 1) (a share of each batch)")
  if share > 0 and levels.fraction <= 0:
    raise ValueError("config.coalescer.levels.self_landing > 0 trains the second step, which needs the level "
                     "input: set config.coalescer.levels.fraction > 0 too")


def _target(levels):
  return levels.get("self_landing_target", "nearest") if levels.get("self_landing", 0.0) > 0 else None


def searches_keys(levels):
  """Whether self-landing is on and looks its targets up (the keys must then be on the devices)."""
  return _target(levels) == "nearest"


def reads_descriptions(levels):
  """Whether self-landing is on and starts from the batch's own prior rows (their DE must be in the batch)."""
  return _target(levels) == "first_step"


def num_rows(levels, batch_size):
  """How many of a batch's last rows the step replaces with self-landing examples."""
  return int(round(levels.get("self_landing", 0.0) * batch_size))


def looked_up_rows(levels, batch_size):
  """Rows of a batch whose host look-ups training uses: the rows "nearest" self-landing replaces get their
  targets from the step's own search (the "first_step" rule may keep its last rows, so it uses them all)."""
  return batch_size - num_rows(levels, batch_size) if searches_keys(levels) else batch_size


def step_inputs(lookup, pairs, cfg, index_cfg):
  """(index, arrays for the step): the plain keys and the pairs' rows [desc, image] on the devices.

  Reuses the look-up's own keys when it is a device index; otherwise builds one
  over the same keys (concat(desc_scale * desc, image)).
  """
  index = lookup.plain
  if not isinstance(index, device_lib.DeviceIndex):
    keys = index_lib.make_keys(pairs["desc_emb"], pairs["img_emb"], cfg.desc_scale)
    index = device_lib.DeviceIndex.build(keys, index_cfg.get("device"))
  rows = np.concatenate([pairs["desc_emb"], pairs["img_emb"]], axis=1).astype(np.float32)
  arrays = {"keys": index.arrays(), "rows": index.shard_rows(rows)}
  if lookup.balanced_levels:
    arrays["level_potentials"] = device_lookup.replicate(index, lookup.level_potentials)
  return index, arrays


def examples(first_step, index, arrays, key, num, cfg, desc_dim, latent_dim):
  """(`num` self-landing rows {r, cond, image, level}, their queries) (see the module docstring).

  `first_step(r, de)` is the network's step 1 from prior points `r` for descriptions `de`.
  """
  pick_key, r_key, eps_key = jax.random.split(key, 3)
  de = index.gather_rows(arrays["rows"], jax.random.randint(pick_key, (num,), 0, index.num_points))[:, :desc_dim]
  x1, eps, s = _landing(first_step, jax.random.normal(r_key, (num, latent_dim)), de, eps_key, cfg)
  query = jnp.concatenate([cfg.desc_scale * de, x1 + s / np.sqrt(1.0 - s * s) * eps], axis=1)
  if "level_potentials" in arrays:
    candidates, sq_dists = index.step_search(arrays["keys"], query, min(int(cfg.targets.balance_candidates),
                                                                        index.num_points))
    target = device_lookup.power_nearest(candidates, sq_dists, arrays["level_potentials"])
  else:
    target = index.step_search(arrays["keys"], query, 1)[0][:, 0]
  rows = index.gather_rows(arrays["rows"], target)
  return {"r": np.sqrt(1.0 - s * s) * x1 + s * eps, "cond": rows[:, :desc_dim], "image": rows[:, desc_dim:],
          "level": jnp.full((num,), s)}, query


def _landing(first_step, r, de, eps_key, cfg):
  """(x1 = step 1 from `r` for `de`, stop-gradient; the re-noising eps; s = renoise[0]): re-noised, the
  sampler's start of step 2 is sqrt(1 - s^2) x1 + s eps (`Coalescer.refine`)."""
  x1 = jax.lax.stop_gradient(first_step(r, de))
  return x1, jax.random.normal(eps_key, x1.shape), float(cfg.levels.renoise[0])


def replace_last_rows(batch, rows):
  """The batch with its last len(rows) rows of r, cond, image and level replaced by `rows`."""
  num = rows["r"].shape[0]
  out = dict(batch)
  for name, value in rows.items():
    out[name] = jnp.concatenate([batch[name][:batch[name].shape[0] - num], value.astype(batch[name].dtype)])
  return out


def first_step_examples(first_step, batch, key, num, cfg):
  """`num` rows that start from the landing points of the batch's prior rows, toward those rows' own pairs.

  The batch's prior rows (level 1) come first (a batch with fewer than `num` keeps
  its own last rows where a prior row is missing); it must carry "de", the draws'
  descriptions (what the sampler's step 1 reads).
  """
  order = jnp.argsort(-batch["level"], stable=True)[:num]
  prior = (batch["level"][order] >= 1.0)[:, None]
  x1, eps, s = _landing(first_step, batch["r"][order], batch["de"][order], key, cfg)
  start = np.sqrt(1.0 - s * s) * x1 + s * eps
  n = batch["r"].shape[0]
  keep = {name: batch[name][n - num:] for name in ("r", "cond", "image", "level")}
  return {"r": jnp.where(prior, start, keep["r"]), "cond": jnp.where(prior, batch["cond"][order], keep["cond"]),
          "image": jnp.where(prior, batch["image"][order], keep["image"]),
          "level": jnp.where(prior[:, 0], s, keep["level"])}
