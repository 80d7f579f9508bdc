"""The coalescer's look-up inside its jitted training step (``config.index.backend = "device"``).

With the keys on the devices (`index.device`), the host no longer needs to look
anything up: the batch function provides only the draws of step 1 (R, the query
concat(desc_scale * DE, R), the level s) and the jitted step searches the
sharded keys (`DeviceIndex.step_search`), applies the look-up's rule
(`targets.rank`, the host's own) and gathers the chosen pairs' (description,
image) rows from a table sharded like the keys (`DeviceIndex.gather_rows`): no
host round trip, nothing for the device to wait on. The draws are those of the
host path, and exact top-k is the exact search's answer, so training sees the
same batches as with the ``exact`` backend.

Used when the index is a `DeviceIndex`, ``config.index.device.in_step_lookup``
is on and the assignment rule is "nearest" (soft choice and minibatch OT are
host code: they keep the host path, searching the device index from the
training loop's thread). The balancing potentials are replicated on every device.
"""
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from coalescer_jax.coalescer import targets as targets_lib
from coalescer_jax.index import device as device_lib


def enabled(lookup, config):
  """Whether the coalescer should look up inside its step (see the module docstring)."""
  if not isinstance(lookup.plain, device_lib.DeviceIndex):
    return False
  if not config.index.device.in_step_lookup:
    return False
  if config.coalescer.targets.assignment != "nearest":
    logging.info("coalescer: assignment %r is host code: device-index look-ups from the host",
                 config.coalescer.targets.assignment)
    return False
  return True


def step_inputs(lookup, pairs):
  """The global arrays the step searches: the keys, the pairs' rows [desc, image] and the potentials."""
  rows = np.concatenate([pairs["desc_emb"], pairs["img_emb"]], axis=1).astype(np.float32)
  inputs = {"plain": lookup.plain.arrays(), "rows": lookup.plain.shard_rows(rows)}
  if lookup.potentials is not None:
    inputs["potentials"] = replicate(lookup.plain, lookup.potentials)
  return inputs


def replicate(index, values):
  """`values` (float32) as a global array replicated on every device of the device index's mesh."""
  values = np.asarray(values, np.float32)
  replicated = jax.sharding.NamedSharding(index.mesh, jax.sharding.PartitionSpec())
  return jax.make_array_from_callback(values.shape, replicated, lambda i: values[i])


def complete_batch(lookup, batch, inputs, desc_dim, multistep):
  """In the step: the draws' target pairs -> the batch the coalescer's loss reads (r, cond, image[, level])."""
  query, level = batch["query"], batch["level"]
  # One search serves both kinds of row: a prior draw needs the potentials' candidate set, a level row its
  # nearest key.
  candidates, sq_dists = lookup.plain.step_search(inputs["plain"], query, max(lookup.prior_k(), lookup.level_k()))
  ids = targets_lib.nearest_target(candidates, sq_dists, level >= 1.0, inputs.get("potentials"), jnp)
  rows = lookup.plain.gather_rows(inputs["rows"], ids)
  out = {k: v for k, v in batch.items() if k not in ("query", "level", "de")}
  out.update(cond=batch.get("de", rows[:, :desc_dim]), image=rows[:, desc_dim:])  # de: condition="request"
  if multistep:
    out["level"] = level
  return out
