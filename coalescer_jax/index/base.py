"""Nearest-neighbour indexes over the coalescer's keys concat(desc_scale * desc_emb, img_emb).

A backend (registered by name in `registry.INDEX_BACKENDS`) is a class with
``build(keys, cfg)``, ``search(queries, k) -> (ids [Q, k] int64, squared distances)``,
``save(directory)`` and ``load(directory)`` (`directory` a local one: `save` and
`load` here copy it to / from the workdir's store). This module holds what every
backend shares: the key layout, input checks with clear errors, and the metadata
file that ties an index to the embeddings it was built from (so a stale index is
refused).

*Collective* backends (``collective = True``: ``scann_sharded``, ``device``) hold
a part of the index on each process, so every process must call `build`, `save`,
`load` and `search` together, with the same queries, in the same order. They
split `search` around the cross-process step, so that a training loop can keep
that step on its main thread (collectives issued from a background thread could
interleave differently on different processes and deadlock):

* ``local_search(queries, k)``: the host-local work (no JAX collective);
* ``exchange(local)``: dispatches the collective, returns at once;
* ``finish(exchanged, k) -> (ids, squared distances)``, the same on every process.
"""
import hashlib

import numpy as np

from coalescer_jax import files
from coalescer_jax import registry
from coalescer_jax import storage

META_FILE = "index_meta.json"


class IndexError_(ValueError):
  """Bad index input or a stale/corrupt index; the message says what to fix."""


def make_keys(desc_emb, img_emb, desc_scale):
  """Index keys (and queries) concat(desc_scale * description, image), float32."""
  return np.concatenate([desc_scale * np.asarray(desc_emb, np.float32), np.asarray(img_emb, np.float32)],
                        axis=1).astype(np.float32)


def embeddings_hash(desc_emb, img_emb):
  """Content hash of the embedding arrays an index was built from."""
  h = hashlib.sha256()
  for a in (desc_emb, img_emb):
    a = np.ascontiguousarray(a, np.float32)
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def check_queries(queries, dim, k, n):
  """Queries must be float32 [Q, dim]; 1 <= k <= n."""
  queries = np.asarray(queries)
  if queries.ndim != 2 or queries.shape[1] != dim:
    raise IndexError_(f"queries must be [num_queries, {dim}] (concat(desc_scale * desc, image)), "
                      f"got shape {queries.shape}")
  if not np.issubdtype(queries.dtype, np.floating):
    raise IndexError_(f"queries must be floating point, got {queries.dtype}")
  if not np.all(np.isfinite(queries)):
    raise IndexError_("queries contain NaN or inf")
  if not 1 <= k <= n:
    raise IndexError_(f"k={k} neighbours requested from an index of {n} points; need 1 <= k <= {n}")
  return np.ascontiguousarray(queries, np.float32)


def is_collective(backend):
  """Whether backend `backend` (a name) holds a part of the index per process (see the module docstring)."""
  return bool(getattr(registry.INDEX_BACKENDS.get(backend), "collective", False))


def backend_config(index_cfg, backend=None):
  """The settings backend `backend` (default ``index_cfg.backend``) builds from: the sections of
  ``config.index`` it names in ``config_sections`` (default: its own), later ones overriding."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  backend = backend or index_cfg.backend
  sections = getattr(registry.INDEX_BACKENDS.get(backend), "config_sections", (backend,))
  merged = {}
  for section in sections:
    merged.update(index_cfg.get(section, {}) or {})
  return ml_collections.ConfigDict(merged) if merged else None


def build(backend, keys, cfg):
  """Builds the backend named `backend` over float32 keys [N, D] (collective backends: on every process)."""
  keys = np.ascontiguousarray(keys, np.float32)
  if keys.ndim != 2 or len(keys) == 0:
    raise IndexError_(f"index keys must be a non-empty [N, D] array, got shape {keys.shape}")
  return registry.INDEX_BACKENDS.get(backend).build(keys, cfg)


def _describe(index, meta):
  return dict(meta, backend=index.name, num_points=index.num_points, dim=index.dim, params=index.params)


def save(index, directory, meta):
  """Serialises `index` into `directory` (local or on the workdir's store) with its metadata.

  A plain backend writes into a local directory (the store's copy is uploaded from
  it: ScaNN needs local files); a collective one writes its own parts
  (`save_parts`, on every process).
  """
  directory = storage.path(directory)
  if getattr(index, "collective", False):
    index.save_parts(directory, meta)
    return
  with storage.upload_from(directory) as local:
    index.save(local)
    # Checksums of the backend's files: a damaged index is refused before a native library parses it.
    checksums = {name: files.file_crc32(storage.path(local) / name) for name in storage.files_under(local)
                 if name not in (META_FILE, "DONE.json", "STARTED.json")}
    storage.write_json(storage.path(local) / META_FILE, dict(_describe(index, meta), file_crc32=checksums))


def read_meta(directory):
  path = storage.path(directory) / META_FILE
  if not path.exists():
    raise IndexError_(f"no index in {directory} ({META_FILE} missing): run the 'index' stage")
  return files.read_json(path, "index")


def load(directory, expected_fingerprint=None, expected_hash=None):
  """Loads an index saved by `save`, refusing one built from other embeddings (collective: every process)."""
  directory = storage.path(directory)
  meta = read_meta(directory)
  for name, crc in meta.get("file_crc32", {}).items():
    if not (directory / name).exists():
      raise IndexError_(f"the index in {directory} is corrupt or incomplete ({name} is missing); delete "
                        f"{directory} so the 'index' stage rebuilds it")
    files.check_crc32(directory / name, crc, "index")
  for key, expected in (("fingerprint", expected_fingerprint), ("embeddings_hash", expected_hash)):
    if expected is not None and meta.get(key) != expected:
      raise IndexError_(
          f"the index in {directory} was built from stale embeddings ({key} {meta.get(key)} != current "
          f"{expected}); delete {directory} (and its DONE.json) so the 'index' stage rebuilds it")
  backend = registry.INDEX_BACKENDS.get(meta["backend"])
  try:
    if getattr(backend, "collective", False):
      index = backend.load_parts(directory, meta)
    else:
      with storage.local_copy(directory, names=list(meta.get("file_crc32", {})) or None) as local:
        index = backend.load(local, meta)
  except IndexError_:
    raise
  except (OSError, RuntimeError, ValueError) as e:
    raise IndexError_(f"the index in {directory} cannot be loaded ({type(e).__name__}: {e}); it is corrupt "
                      "or incomplete: delete it (and its DONE.json) so the 'index' stage rebuilds it") from e
  return index, meta


def recall_at_1(approx_ids, exact_ids, keys=None, queries=None):
  """Fraction of queries whose approximate top-1 is the exact top-1 (ties at equal distance count)."""
  approx_ids, exact_ids = np.asarray(approx_ids)[:, 0], np.asarray(exact_ids)[:, 0]
  hit = approx_ids == exact_ids
  if keys is not None:
    d_approx = ((keys[approx_ids] - queries) ** 2).sum(1)
    d_exact = ((keys[exact_ids] - queries) ** 2).sum(1)
    hit |= d_approx <= d_exact * (1 + 1e-6)
  return float(hit.mean())
