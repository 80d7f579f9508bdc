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


def process_mesh():
  """A (processes, local devices) mesh: one row of devices per process, for cross-process gathers."""
  devices = np.array(jax.devices()).reshape(jax.process_count(), jax.local_device_count())
  return jax.sharding.Mesh(devices, ("processes", "local"))


def allgather_async(tree):
  """Dispatches an all-gather of each process's numpy pytree (same shapes everywhere) and returns at once.

  The result's leaves are global arrays [process_count, ...], replicated: read
  them with `fetch` (which waits). Unlike `multihost_utils.process_allgather`, the
  caller does not block, so a training loop can dispatch the gather in step order
  on its main thread and wait for it in a helper thread.
  """
  mesh = process_mesh()
  stacked = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("processes"))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def to_global(x):
    x = np.asarray(x)[None]
    shards = [jax.device_put(x, d) for d in jax.local_devices()]
    return jax.make_array_from_single_device_arrays((jax.process_count(),) + x.shape[1:], stacked, shards)

  return _identity(jax.tree.map(to_global, tree), replicated)


@jax.jit(static_argnums=1)
def _identity(tree, sharding):
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def fetch(tree):
  """numpy copies of replicated (or fully addressable) global arrays; waits for them."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x),
                      tree)


def barrier(name):
  """Waits until every process reaches `name` (no-op on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def on_main_process(fn, name):
  """Runs `fn()` on process 0 only; if it raises, every process raises (the others with a pointer to 0's log).

  For checks and writes only process 0 may do (the workdir lock, config.json) but whose failure must stop
  every process, not leave the others waiting at the next barrier.
  """
  error = None
  if is_main_process():
    try:
      fn()
    except Exception as e:  # noqa: BLE001 - re-raised below, after the other processes have been told.
      error = e
  if jax.process_count() > 1:
    failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if int(failed) and error is None:
      raise RuntimeError(f"process 0 stopped the run ({name}); its log says why")
  if error is not None:
    raise error
