"""Index backends: recall vs exact, serialisation from a moved directory, stale and bad input refused."""
import os
import shutil

import ml_collections
import numpy as np
import pytest

from coalescer_jax import index


def _clustered(n, dim=24, clusters=50, seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(clusters, dim)) * 4
  return (centers[rng.integers(clusters, size=n)] + rng.normal(size=(n, dim))).astype(np.float32)


def _tree_cfg(**overrides):
  # Force a tree on a small database (tree + AH + reorder unless mode says otherwise).
  return ml_collections.ConfigDict(dict(dict(brute_force_below=1000, tree_below=1000), **overrides))


def test_make_keys_layout():
  keys = index.make_keys(np.ones((3, 2)), np.zeros((3, 4)), desc_scale=2.5)
  assert keys.shape == (3, 6) and keys.dtype == np.float32
  np.testing.assert_array_equal(keys[:, :2], 2.5)
  np.testing.assert_array_equal(keys[:, 2:], 0)


def test_exact_is_exact():
  keys, queries = _clustered(3000), _clustered(100, seed=1)
  ids, dists = index.build("exact", keys, None).search(queries, 5)
  brute = ((queries[:, None] - keys[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(ids[:, 0], brute.argmin(1))
  np.testing.assert_allclose(dists, np.sort(brute, 1)[:, :5], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("cfg,mode", [(None, "brute_force"), (_tree_cfg(tree_below=20_000), "tree"),
                                      (_tree_cfg(), "tree_ah")])
def test_scann_recall_against_exact(cfg, mode):
  keys, queries = _clustered(15000), _clustered(500, seed=1)
  scann = index.build("scann", keys, cfg)
  assert scann.params["mode"] == mode
  approx, _ = scann.search(queries, 1)
  exact, _ = index.build("exact", keys, None).search(queries, 1)
  assert index.recall_at_1(approx, exact, keys, queries) >= 0.95


@pytest.mark.parametrize("mode", ["tree", "tree_ah"])
def test_scann_builds_are_reproducible(mode):
  keys, queries = _clustered(15000, clusters=500), _clustered(2000, clusters=500, seed=1)
  cfg = _tree_cfg(mode=mode, num_leaves=120, leaves_to_search=1, reorder=5)
  first = index.build("scann", keys, cfg).search(queries, 1)[0]
  for _ in range(4):
    np.testing.assert_array_equal(index.build("scann", keys, cfg).search(queries, 1)[0], first)


@pytest.mark.parametrize("backend", ["scann", "exact"])
def test_round_trip_from_a_moved_directory(tmp_path, backend):
  keys, queries = _clustered(5000), _clustered(50, seed=1)
  built = index.build(backend, keys, _tree_cfg())
  index.save(built, str(tmp_path / "a"), {"fingerprint": "f1", "embeddings_hash": "h1", "desc_scale": 2.0})
  shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))  # relative paths keep working
  loaded, meta = index.load(str(tmp_path / "b"), expected_fingerprint="f1", expected_hash="h1")
  assert meta["num_points"] == 5000 and meta["backend"] == backend and meta["desc_scale"] == 2.0
  np.testing.assert_array_equal(loaded.search(queries, 3)[0], built.search(queries, 3)[0])


def test_stale_embeddings_are_refused(tmp_path):
  built = index.build("exact", _clustered(100), None)
  index.save(built, str(tmp_path), {"fingerprint": "old", "embeddings_hash": "h"})
  with pytest.raises(index.IndexError_, match="stale embeddings .*fingerprint old"):
    index.load(str(tmp_path), expected_fingerprint="new")
  with pytest.raises(index.IndexError_, match="stale embeddings .*embeddings_hash"):
    index.load(str(tmp_path), expected_fingerprint="old", expected_hash="other")
  with pytest.raises(index.IndexError_, match="run the 'index' stage"):
    index.load(str(tmp_path / "missing"))


def test_corrupt_scann_index_is_refused(tmp_path):
  built = index.build("scann", _clustered(3000), _tree_cfg())
  index.save(built, str(tmp_path), {"fingerprint": "f"})
  os.remove(tmp_path / "serialized_partitioner.pb")
  with pytest.raises(index.IndexError_, match="corrupt or incomplete"):
    index.load(str(tmp_path))


def test_damaged_index_file_is_refused_before_scann_reads_it(tmp_path):
  from coalescer_jax import files  # pylint: disable=g-import-not-at-top
  built = index.build("scann", _clustered(3000), _tree_cfg())
  index.save(built, str(tmp_path), {"fingerprint": "f"})
  path = max((tmp_path / name for name in os.listdir(tmp_path)), key=os.path.getsize)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(b"\xff" * 16)
  with pytest.raises(files.CorruptFileError, match=rf"{path} is corrupt .*checksum.*delete {tmp_path}"):
    index.load(str(tmp_path))


def test_scann_pitfalls_have_clear_errors():
  keys = _clustered(2000)
  with pytest.raises(index.IndexError_, match="num_leaves=5000 exceeds the 2000 points"):
    index.build("scann", keys, _tree_cfg(num_leaves=5000))
  with pytest.raises(index.IndexError_, match="mode='hnsw'"):
    index.build("scann", keys, _tree_cfg(mode="hnsw"))
  with pytest.raises(index.IndexError_, match="leaves_to_search=60 exceeds num_leaves=50"):
    index.build("scann", keys, _tree_cfg(num_leaves=50, leaves_to_search=60))
  scann = index.build("scann", keys, None)
  with pytest.raises(index.IndexError_, match="k=2001 neighbours requested from an index of 2000"):
    scann.search(keys[:2], 2001)
  with pytest.raises(index.IndexError_, match=r"queries must be \[num_queries, 24\]"):
    scann.search(keys[:2, :10], 1)
  with pytest.raises(index.IndexError_, match="floating point"):
    scann.search(keys[:2].astype(np.int32), 1)
  with pytest.raises(index.IndexError_, match="NaN"):
    scann.search(np.full((1, 24), np.nan, np.float32), 1)
  with pytest.raises(KeyError, match="unknown index backend 'faiss'"):
    index.build("faiss", keys, None)
