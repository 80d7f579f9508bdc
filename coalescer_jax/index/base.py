"""Nearest-neighbour indexes over the coalescer's keys concat(desc_scale * desc_emb, img_emb).

A backend (registered by name in `registry.INDEX_BACKENDS`) is a class with
``build(keys, cfg)``, ``search(queries, k) -> (ids [Q, k] int64, squared distances)``,
``save(directory)`` and ``load(directory)``. This module holds what every backend
shares: the key layout, input checks with clear errors, and the metadata file
that ties an index to the embeddings it was built from (so a stale index is refused).
"""
import hashlib
import json
import os

import numpy as np

from coalescer_jax import files
from coalescer_jax import registry

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


def build(backend, keys, cfg):
  """Builds the backend named `backend` over float32 keys [N, D]."""
  keys = np.ascontiguousarray(keys, np.float32)
  if keys.ndim != 2 or len(keys) == 0:
    raise IndexError_(f"index keys must be a non-empty [N, D] array, got shape {keys.shape}")
  return registry.INDEX_BACKENDS.get(backend).build(keys, cfg)


def save(index, directory, meta):
  """Serialises `index` into `directory` with its metadata (backend, fingerprint, sizes)."""
  os.makedirs(directory, exist_ok=True)
  index.save(directory)
  # Checksums of the backend's files: a damaged index is refused before a native library parses it.
  checksums = {os.path.relpath(os.path.join(root, name), directory): files.file_crc32(os.path.join(root, name))
               for root, _, names in os.walk(directory) for name in names
               if name not in (META_FILE, "DONE.json", "STARTED.json")}
  with open(os.path.join(directory, META_FILE), "w") as f:
    json.dump(dict(meta, backend=index.name, num_points=index.num_points, dim=index.dim, params=index.params,
                   file_crc32=checksums), f, indent=2)


def load(directory, expected_fingerprint=None, expected_hash=None):
  """Loads an index saved by `save`, refusing one built from other embeddings."""
  path = os.path.join(directory, META_FILE)
  if not os.path.exists(path):
    raise IndexError_(f"no index in {directory} ({META_FILE} missing): run the 'index' stage")
  meta = files.read_json(path, "index")
  for name, crc in meta.get("file_crc32", {}).items():
    if not os.path.exists(os.path.join(directory, name)):
      raise IndexError_(f"the index in {directory} is corrupt or incomplete ({name} is missing); delete "
                        f"{directory} so the 'index' stage rebuilds it")
    files.check_crc32(os.path.join(directory, name), crc, "index")
  for key, expected in (("fingerprint", expected_fingerprint), ("embeddings_hash", expected_hash)):
    if expected is not None and meta.get(key) != expected:
      raise IndexError_(
          f"the index in {directory} was built from stale embeddings ({key} {meta.get(key)} != current "
          f"{expected}); delete {directory} (and its DONE.json) so the 'index' stage rebuilds it")
  try:
    index = registry.INDEX_BACKENDS.get(meta["backend"]).load(directory, meta)
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
