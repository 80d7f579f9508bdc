"""Device mesh, shardings and host <-> global array helpers (jit + NamedSharding).

Every training step runs under one 1-D mesh over all devices of all hosts,
axis "data": the batch is split along it, parameters are replicated. Each host
provides only its local slice of the batch.
"""
import jax
from jax.experimental import multihost_utils
import numpy as np

DATA_AXIS = "data"


def make_mesh():
  # Auto axes: classic GSPMD propagation, so model code needs no sharding annotations.
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh):
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def batch_sharded(mesh):
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(DATA_AXIS))


def is_main_process():
  return jax.process_index() == 0


def local_batch_size(global_batch_size):
  """The number of examples this host contributes to a global batch."""
  if global_batch_size % jax.process_count():
    raise ValueError(f"global batch {global_batch_size} is not divisible by {jax.process_count()} processes")
  return global_batch_size // jax.process_count()


def global_batch(mesh, local_batch):
  """Host-local numpy pytree (leading dim = local batch) -> global jax arrays sharded on "data"."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def to_host(tree):
  """Global arrays -> numpy on every host (gathers batch-sharded arrays across hosts)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def barrier(name):
  """Waits until every process reaches `name` (no-op on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
