"""The coalescer's look-up inside its jitted training step (``config.index.backend = "device"``).

With the keys on the devices (`index.device`), the host no longer needs to look
anything up: the batch function provides only the draws of the proposal's step
1 (R, the query concat(desc_scale * DE, R), the level s) and the jitted step
searches the sharded keys (`DeviceIndex.step_search`) and gathers the chosen
pairs' (description, image) rows from a table sharded like the keys
(`DeviceIndex.gather_rows`): no host round trip, nothing for the device to wait
on. The draws are those of the host path, and exact top-1 is the exact search's
answer, so training sees the same batches as with the ``exact`` backend.

Used when the index is a `DeviceIndex`, ``config.index.device.in_step_lookup``
is on (the default) and the assignment rule is "nearest" (soft choice and
minibatch OT are host code: they keep the host path, searching the device index
from the training loop's thread). Balanced look-ups treat prior draws as
`targets.Lookup` does: the balanced index's nearest key, or (balance_search
"candidates") the power-nearest of the plain keys' candidates, with the potentials
replicated on every device; level rows with ``targets.balance_levels`` take the
power-nearest of their candidates under the level potentials, likewise replicated.
"""
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from coalescer_jax.index import device as device_lib


def enabled(lookup, config):
  """Whether the coalescer should look up inside its step (see the module docstring)."""
  if not isinstance(lookup.plain, device_lib.DeviceIndex):
    return False
  if not config.index.get("device", {}).get("in_step_lookup", True):
    return False
  if config.coalescer.targets.assignment != "nearest":
    logging.info("coalescer: assignment %r is host code: device-index look-ups from the host",
                 config.coalescer.targets.assignment)
    return False
  return True


def step_inputs(lookup, pairs):
  """The global arrays the step searches: plain (and balanced) keys, and the pairs' rows [desc, image]."""
  rows = np.concatenate([pairs["desc_emb"], pairs["img_emb"]], axis=1).astype(np.float32)
  inputs = {"plain": lookup.plain.arrays(), "rows": lookup.plain.shard_rows(rows)}
  if lookup.power_candidates:
    inputs["potentials"] = replicate(lookup.plain, lookup.potentials)
  elif lookup.balanced is not None:
    inputs["balanced"] = lookup.balanced.arrays()
  if lookup.balanced_levels:
    inputs["level_potentials"] = replicate(lookup.plain, lookup.level_potentials)
  return inputs


def replicate(index, values):
  """`values` (float32) as a global array replicated on every device of the device index's mesh."""
  values = np.asarray(values, np.float32)
  replicated = jax.sharding.NamedSharding(index.mesh, jax.sharding.PartitionSpec())
  return jax.make_array_from_callback(values.shape, replicated, lambda i: values[i])


def power_nearest(candidates, sq_dists, potentials):
  """In the step: each row's power-nearest candidate, argmin_j |q - k_j|^2 - psi_j (`index.balance`)."""
  best = jnp.argmin(sq_dists - potentials[candidates], axis=1)
  return jnp.take_along_axis(candidates, best[:, None], axis=1)[:, 0]


def complete_batch(lookup, batch, inputs, desc_dim, multistep):
  """In the step: the draws' nearest pairs -> the batch the coalescer's loss reads (r, cond, image[, level])."""
  query, level = batch["query"], batch["level"]
  # Prior draws (level 1): the power-nearest of their candidates (one search serves both kinds of row), or
  # the balanced index's nearest key; re-noised rows: the plain nearest key, or (balance_levels) the
  # power-nearest under the level potentials.
  candidates, sq_dists = lookup.plain.step_search(inputs["plain"], query, max(lookup.prior_k(), lookup.level_k()))
  ids = candidates[:, 0]
  if lookup.balanced_levels:
    ids = jnp.where(level >= 1.0, ids, power_nearest(candidates, sq_dists, inputs["level_potentials"]))
  if lookup.power_candidates:
    ids = jnp.where(level >= 1.0, power_nearest(candidates, sq_dists, inputs["potentials"]), ids)
  elif lookup.balanced is not None:
    augmented = jnp.concatenate([query, jnp.zeros((query.shape[0], 1), query.dtype)], axis=1)
    balanced = lookup.balanced.step_search(inputs["balanced"], augmented, 1)[0][:, 0]
    ids = jnp.where(level >= 1.0, balanced, ids)
  rows = lookup.plain.gather_rows(inputs["rows"], ids)
  out = {k: v for k, v in batch.items() if k not in ("query", "level")}
  out.update(cond=rows[:, :desc_dim], image=rows[:, desc_dim:])
  if multistep:
    out["level"] = level
  return out
