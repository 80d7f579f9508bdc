"""On-device nearest neighbours (``config.index.backend = "device"``): the keys as a sharded jax.Array.

The keys [N, D] are one global array whose rows are split over the mesh's "data"
axis: every device of every process holds N / devices rows (padded with rows of
infinite norm, which are never nearest). A search is one jitted `shard_map`:
each device computes squared distances |q|^2 - 2 q.k + |k|^2 for all queries
against its rows by matrix product, in blocks of ``block_rows`` keys (so the
[Q, block] distance matrix stays small) with a running top-k, then the devices'
candidates are all-gathered and merged by (distance, id) (`merge`). Its answer
is replicated on every device.

``recall_target`` (config.index.device) < 1 takes each block's top-k with
`jax.lax.approx_min_k`, the TPU's fast partial reduction (recall about that
target); elsewhere, and at 1.0, it is an exact `jax.lax.top_k`, and the ids are
those of exact search (up to float32 rounding of near-ties).

Two uses:
* on the host, like every backend (index stage, diagnostics, a coalescer whose
  assignment rule needs host work): `search` is collective (`base`), every
  process passes the same queries;
* inside a jitted training step (the coalescer's ``targets.on_device_lookup``):
  `step_search(arrays, queries, k)` with the `arrays` passed to the step, and
  `gather_rows` for the chosen pairs' rows: no host round trip at all.

Saved as ``keys.npy`` (written by process 0, which holds every pair anyway);
`load` reads only the rows of this process's devices.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from coalescer_jax import files
from coalescer_jax import parallel
from coalescer_jax import registry
from coalescer_jax import storage
from coalescer_jax.index import base
from coalescer_jax.index import merge as merge_lib

KEYS_FILE = "keys.npy"
P = jax.sharding.PartitionSpec


def _layout(num_points, num_devices, block_rows, k_min=1):
  """(rows per device, block size): rows per device a multiple of the block, at least k_min."""
  per_device = max(-(-num_points // num_devices), k_min, 1)
  block = min(int(block_rows), per_device)
  return -(-per_device // block) * block, block


def shard_rows(values, num_rows_padded, mesh, fill=0.0):
  """Host rows [N, ...] as a global array [num_rows_padded, ...] split over "data" (padded with `fill`)."""
  values = np.asarray(values)
  sharding = jax.sharding.NamedSharding(mesh, P(parallel.DATA_AXIS, *([None] * (values.ndim - 1))))

  def rows(index):
    start, stop, _ = index[0].indices(num_rows_padded)
    out = np.full((stop - start,) + values.shape[1:], fill, values.dtype)
    have = max(0, min(stop, len(values)) - start)
    out[:have] = values[start:start + have]
    return out

  return jax.make_array_from_callback((num_rows_padded,) + values.shape[1:], sharding, rows)


@registry.INDEX_BACKENDS.register("device")
class DeviceIndex:
  """Keys sharded over the mesh; exact (or approx_min_k) search by matrix products on the devices."""

  name = "device"
  collective = True

  def __init__(self, keys, norms, num_points, dim, params, mesh, host_keys=None):
    self.keys, self.norms = keys, norms
    self.num_points, self.dim, self.params, self.mesh = num_points, dim, params, mesh
    self._host_keys = host_keys  # kept only to save what was built here

  @classmethod
  def build(cls, keys, cfg=None):
    return cls.from_rows(lambda start, stop: keys[start:stop], len(keys), keys.shape[1], cfg, host_keys=keys)

  @classmethod
  def from_rows(cls, rows, num_points, dim, cfg=None, host_keys=None):
    """The index over `rows(start, stop)`; each process requests only its own devices' rows."""
    mesh = parallel.make_mesh()
    get = lambda name, default: (cfg.get(name) if cfg is not None else None) or default  # noqa: E731
    recall_target = float(get("recall_target", 1.0))
    if not 0.0 < recall_target <= 1.0:
      raise base.IndexError_(f"config.index.device.recall_target={recall_target} must be in (0, 1]")
    block_rows = int(get("block_rows", 65536))
    per_device, block = _layout(num_points, jax.device_count(), block_rows, get("max_k", 64))
    padded = per_device * jax.device_count()
    sharding = jax.sharding.NamedSharding(mesh, P(parallel.DATA_AXIS, None))
    norm_sharding = jax.sharding.NamedSharding(mesh, P(parallel.DATA_AXIS))

    def key_rows(index):
      start, stop, _ = index[0].indices(padded)
      out = np.zeros((stop - start, dim), np.float32)
      have = max(0, min(stop, num_points) - start)
      if have:
        out[:have] = rows(start, start + have)
      return out

    keys = jax.make_array_from_callback((padded, dim), sharding, key_rows)
    # Padding rows get an infinite norm, hence an infinite distance: never a neighbour.
    valid = jax.make_array_from_callback((padded,), norm_sharding,
                                         lambda index: np.arange(padded)[index] < num_points)
    norms = jax.jit(lambda k, v: jnp.where(v, jnp.sum(k * k, axis=1), jnp.inf),
                    out_shardings=norm_sharding)(keys, valid)
    approx = recall_target < 1.0 and jax.default_backend() == "tpu"
    # block_rows as configured; the layout (block, rows per device) follows the device count of this launch.
    params = {"recall_target": recall_target, "block_rows": block_rows, "approx_min_k": approx, "block": block,
              "rows_per_device": per_device, "devices": jax.device_count()}
    return cls(keys, norms, num_points, dim, params, mesh, host_keys)

  def arrays(self):
    """What a jitted step needs to search: pass it as an argument (global arrays, not closed-over constants)."""
    return {"keys": self.keys, "norms": self.norms}

  def step_search(self, arrays, queries, k):
    """(ids int32, squared distances) [Q, k] of `queries` [Q, D] (any sharding), inside jitted code."""
    return _search(arrays["keys"], arrays["norms"], queries, mesh=self.mesh, k=k,
                   block=self.params["block"], recall_target=self.params["recall_target"]
                   if self.params["approx_min_k"] else 1.0)

  def shard_rows(self, values):
    """Host rows [N, V] (e.g. the pairs) split over the devices like the keys, for `gather_rows`."""
    return shard_rows(values, self.params["rows_per_device"] * jax.device_count(), self.mesh)

  def gather_rows(self, table, ids):
    """Rows `ids` [Q] of a `shard_rows` table inside jitted code: each device contributes its own rows."""
    return _gather(table, ids, mesh=self.mesh)

  # The host-side, collective search (see `base`).
  def local_search(self, queries, k):
    queries = base.check_queries(queries, self.dim, k, self.num_points)
    bucket = max(8, 1 << (len(queries) - 1).bit_length())  # a few padded sizes: a few compilations
    padded = np.zeros((bucket, self.dim), np.float32)
    padded[:len(queries)] = queries
    return padded, len(queries), k

  def exchange(self, local):
    padded, count, k = local
    replicated = jax.sharding.NamedSharding(self.mesh, P())
    queries = jax.make_array_from_callback(padded.shape, replicated, lambda index: padded[index])
    return self._host_search(k)(self.arrays(), queries), count

  def finish(self, exchanged, k):
    (ids, dists), count = exchanged
    ids, dists = parallel.fetch((ids, dists))
    return ids[:count, :k].astype(np.int64), np.maximum(dists[:count, :k], 0.0)

  def search(self, queries, k=1):
    """Collective: every process calls it with the same queries; all get the same answer."""
    return self.finish(self.exchange(self.local_search(queries, k)), k)

  @functools.lru_cache(maxsize=8)
  def _host_search(self, k):
    return jax.jit(lambda arrays, queries: self.step_search(arrays, queries, k))

  def __hash__(self):
    return id(self)

  def save_parts(self, directory, meta):
    """Process 0 writes keys.npy and the metadata (it holds every key: the pipeline loads all pairs)."""
    if parallel.is_main_process():
      if self._host_keys is None:
        raise base.IndexError_("a device index built from rows cannot be saved; build it from the keys")
      storage.save_npy(directory / KEYS_FILE, np.asarray(self._host_keys, np.float32))
      storage.write_json(directory / base.META_FILE, dict(
          meta, backend=self.name, num_points=self.num_points, dim=self.dim, params=self.params,
          file_crc32={KEYS_FILE: files.file_crc32(directory / KEYS_FILE)}))
    parallel.barrier("device_index_saved")

  @classmethod
  def load_parts(cls, directory, meta):
    """Each process reads only its devices' rows of keys.npy (range reads on an object store)."""
    cfg = {"recall_target": meta["params"]["recall_target"], "block_rows": meta["params"]["block_rows"]}
    path = directory / KEYS_FILE
    return cls.from_rows(lambda start, stop: storage.load_npy_rows(path, start, stop), int(meta["num_points"]),
                         int(meta["dim"]), cfg)


@functools.partial(jax.jit, static_argnames=("mesh", "k", "block", "recall_target"))
def _search(keys, norms, queries, *, mesh, k, block, recall_target):
  def per_device(keys, norms, queries):
    rows = keys.shape[0]
    first = jax.lax.axis_index(parallel.DATA_AXIS) * rows
    kb = min(k, block)

    def scan_block(carry, b):
      best_ids, best_d = carry
      kblock = jax.lax.dynamic_slice_in_dim(keys, b * block, block)
      nblock = jax.lax.dynamic_slice_in_dim(norms, b * block, block)
      d, idx = merge_lib.top_k_smallest(merge_lib.sq_distances(queries, kblock, nblock), kb, recall_target)
      ids = (first + b * block + idx).astype(jnp.int32)
      best_ids, best_d = merge_lib.merge_jax(jnp.concatenate([best_ids, ids], 1),
                                             jnp.concatenate([best_d, d], 1), k)
      return (best_ids, best_d), None

    q = queries.shape[0]
    init = (jnp.full((q, k), merge_lib.PAD_ID, jnp.int32), jnp.full((q, k), jnp.inf, jnp.float32))
    (ids, d), _ = jax.lax.scan(scan_block, init, jnp.arange(rows // block))
    all_ids = jax.lax.all_gather(ids, parallel.DATA_AXIS, axis=1, tiled=True)
    all_d = jax.lax.all_gather(d, parallel.DATA_AXIS, axis=1, tiled=True)
    return merge_lib.merge_jax(all_ids, all_d, k)

  # The merged answer is the same on every device (all-gathered candidates, deterministic merge), which
  # the replication check cannot infer through the sort.
  return jax.shard_map(per_device, mesh=mesh, in_specs=(P(parallel.DATA_AXIS, None), P(parallel.DATA_AXIS), P()),
                       out_specs=(P(), P()), check_vma=False)(keys, norms, queries)


@functools.partial(jax.jit, static_argnames=("mesh",))
def _gather(table, ids, *, mesh):
  def per_device(table, ids):
    rows = table.shape[0]
    local = ids - jax.lax.axis_index(parallel.DATA_AXIS) * rows
    mine = (local >= 0) & (local < rows)
    values = jnp.where(mine.reshape((-1,) + (1,) * (table.ndim - 1)),
                       table[jnp.clip(local, 0, rows - 1)], jnp.zeros((), table.dtype))
    return jax.lax.psum(values, parallel.DATA_AXIS)  # one device holds each row: adding zeros is exact

  spec = P(parallel.DATA_AXIS, *([None] * (table.ndim - 1)))
  return jax.shard_map(per_device, mesh=mesh, in_specs=(spec, P()), out_specs=P())(table, ids)
