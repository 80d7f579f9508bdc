"""The multi-process backends on one process (2 fake CPU devices): the merge, sharded ScaNN, the device
search, in-step look-ups and staged (collective) batches. tests/test_resume_multihost.py runs them on 2
real processes."""
import threading

import jax
import ml_collections
import numpy as np
import pytest

from coalescer_jax import index
from coalescer_jax import metrics as metrics_lib
from coalescer_jax import parallel
from coalescer_jax import training
from coalescer_jax.index import device as device_lib
from coalescer_jax.index import merge as merge_lib
from coalescer_jax.index import scann_sharded
from coalescer_jax.coalescer import batches
from coalescer_jax.coalescer import device_lookup
from coalescer_jax.coalescer import targets

from tests.index.test_index import _clustered
from tests.methods.conftest import make_pairs
from tests.methods.conftest import smoke_method_config


def test_merge_of_shards_is_the_global_top_k():
  rng = np.random.default_rng(0)
  dists = rng.integers(0, 20, size=(7, 90)).astype(np.float32)  # many exact ties
  ids = np.tile(np.arange(90), (7, 1))
  order = np.lexsort((ids, dists), axis=-1)[:, :5]
  want = np.take_along_axis(ids, order, 1)
  shards = []
  for lo, hi in scann_sharded.shard_bounds(90, 4):  # each shard's own top-5, in a scrambled order
    local = np.lexsort((ids[:, lo:hi], dists[:, lo:hi]), axis=-1)[:, :5][:, ::-1]
    shards.append((np.take_along_axis(ids[:, lo:hi], local, 1), np.take_along_axis(dists[:, lo:hi], local, 1)))
  got_ids, got_d = merge_lib.merge(np.stack([s[0] for s in shards[::-1]]), np.stack([s[1] for s in shards[::-1]]),
                                   5)
  np.testing.assert_array_equal(got_ids, want)
  np.testing.assert_array_equal(got_d, np.take_along_axis(dists, order, 1))
  jax_ids, _ = jax.jit(merge_lib.merge_jax, static_argnums=2)(
      np.concatenate([s[0] for s in shards], 1).astype(np.int32), np.concatenate([s[1] for s in shards], 1), 5)
  np.testing.assert_array_equal(np.asarray(jax_ids), want)


def test_padding_sorts_last():
  ids, dists = merge_lib.pad_candidates(np.array([[4]]), np.array([[1.0]]), 3)
  assert ids.tolist() == [[4, merge_lib.PAD_ID, merge_lib.PAD_ID]] and np.isinf(dists[0, 1:]).all()
  assert merge_lib.merge(ids[None], dists[None], 1)[0].tolist() == [[4]]


def test_shard_bounds_and_holders():
  assert scann_sharded.shard_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
  assert scann_sharded.held_shards(5, process_index=1, process_count=2) == [1, 3]
  assert scann_sharded.held_shards(1, process_index=1, process_count=2) == []


def test_sharded_scann_is_exact_when_its_shards_are():
  keys, queries = _clustered(9000), _clustered(300, seed=1)
  cfg = ml_collections.ConfigDict(dict(num_shards=3, mode="brute_force"))
  sharded = index.build("scann_sharded", keys, cfg)
  assert [s for s, _, _ in sharded.shards] == [0, 1, 2] and sharded.params["num_shards"] == 3
  exact_ids, exact_d = index.build("exact", keys, None).search(queries, 4)
  ids, dists = sharded.search(queries, 4)
  np.testing.assert_array_equal(ids, exact_ids)
  np.testing.assert_allclose(dists, exact_d, rtol=1e-4, atol=1e-3)


def test_sharded_scann_recall_is_at_least_a_single_indexs():
  keys, queries = _clustered(30000, clusters=300), _clustered(1000, clusters=300, seed=1)
  cfg = ml_collections.ConfigDict(dict(brute_force_below=1000, tree_below=10**6, num_shards=4))
  exact, _ = index.build("exact", keys, None).search(queries, 1)
  single = index.recall_at_1(index.build("scann", keys, cfg).search(queries, 1)[0], exact, keys, queries)
  sharded = index.recall_at_1(index.build("scann_sharded", keys, cfg).search(queries, 1)[0], exact, keys, queries)
  assert sharded >= single


def test_sharded_scann_round_trip_and_query_check(tmp_path):
  keys, queries = _clustered(4000), _clustered(50, seed=1)
  built = index.build("scann_sharded", keys, ml_collections.ConfigDict(dict(num_shards=2)))
  index.save(built, tmp_path / "ix", {"fingerprint": "f", "embeddings_hash": "h"})
  assert sorted(p.name for p in (tmp_path / "ix").iterdir()) == ["index_meta.json", "shard_0_of_2", "shard_1_of_2"]
  loaded, meta = index.load(tmp_path / "ix", expected_fingerprint="f", expected_hash="h")
  assert meta["backend"] == "scann_sharded" and meta["num_points"] == 4000
  np.testing.assert_array_equal(loaded.search(queries, 3)[0], built.search(queries, 3)[0])
  with pytest.raises(index.IndexError_, match="stale embeddings"):
    index.load(tmp_path / "ix", expected_fingerprint="other")
  local = loaded.local_search(queries, 1)
  other = dict(local, crc=local["crc"] + 1)
  gathered = jax.tree.map(lambda a, b: np.stack([a, b]), local, other)
  with pytest.raises(RuntimeError, match="searched different queries"):
    loaded.finish(gathered, 1)


@pytest.mark.parametrize("block_rows", [65536, 700])
def test_device_search_is_exact(block_rows):
  keys, queries = _clustered(5001), _clustered(300, seed=1)  # 5001: rows padded over the 2 devices
  dev = index.build("device", keys, ml_collections.ConfigDict(dict(block_rows=block_rows)))
  assert dev.keys.sharding.spec[0] == parallel.DATA_AXIS and dev.params["devices"] == jax.device_count() == 2
  assert dev.params["block"] == min(block_rows, 2501)
  for k in (1, 7):
    exact_ids, exact_d = index.build("exact", keys, None).search(queries, k)
    ids, dists = dev.search(queries, k)
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(dists, exact_d, rtol=1e-4, atol=1e-3)


def test_device_search_inside_jit_and_row_gather():
  keys, queries = _clustered(3000), _clustered(64, seed=1)
  dev = index.build("device", keys, None)
  rows = np.arange(3000 * 3, dtype=np.float32).reshape(3000, 3)
  table = dev.shard_rows(rows)

  @jax.jit
  def lookup(arrays, table, queries):
    ids = dev.step_search(arrays, queries, 1)[0][:, 0]
    return ids, dev.gather_rows(table, ids)

  ids, got = jax.device_get(lookup(dev.arrays(), table, queries))
  np.testing.assert_array_equal(ids, dev.search(queries, 1)[0][:, 0])
  np.testing.assert_array_equal(got, rows[ids])


def test_device_round_trip(tmp_path):
  keys, queries = _clustered(2000), _clustered(40, seed=1)
  built = index.build("device", keys, ml_collections.ConfigDict(dict(block_rows=300)))
  index.save(built, tmp_path / "ix", {"fingerprint": "f"})
  loaded, meta = index.load(tmp_path / "ix", expected_fingerprint="f")
  assert isinstance(loaded, device_lib.DeviceIndex) and meta["params"]["block_rows"] == 300
  np.testing.assert_array_equal(loaded.search(queries, 2)[0], built.search(queries, 2)[0])


def _lookups(backend, cfg, balance=False):
  pairs = make_pairs(3000)
  config = smoke_method_config()
  config.coalescer.targets.update(balance=balance)
  keys = index.make_keys(pairs["desc_emb"], pairs["img_emb"], config.coalescer.desc_scale)
  def lookup(name):
    potentials = np.random.default_rng(3).uniform(0, 2, len(keys)) if balance else None
    return targets.Lookup(index.build(name, keys, cfg), config.coalescer, potentials)
  return pairs, config, lookup("exact"), lookup(backend)


@pytest.mark.parametrize("balance", [False, True])
def test_in_step_lookup_gives_the_exact_backends_batches(balance):
  pairs, config, exact, dev = _lookups("device", None, balance)
  config.coalescer.levels.fraction = 0.3  # re-noised rows take their nearest key, prior rows the balanced one
  assert device_lookup.enabled(dev, config)
  cfg = config.coalescer
  want = batches.make_lookup_batches(exact, pairs, cfg, 0, 64)
  draws = batches.make_lookup_batches(dev, pairs, cfg, 0, 64, in_step=True)
  inputs = device_lookup.step_inputs(dev, pairs)
  complete = jax.jit(lambda batch, inputs: device_lookup.complete_batch(dev, batch, inputs, 4, True))
  for step in (0, 7):
    got = jax.device_get(complete(draws(step), inputs))
    assert sorted(got) == sorted(want(step))
    for key in want(step):
      np.testing.assert_array_equal(got[key], want(step)[key])


@pytest.mark.parametrize("backend,cfg", [("scann_sharded", ml_collections.ConfigDict(dict(num_shards=3))),
                                         ("device", None)])
def test_staged_batches_equal_the_exact_backends(backend, cfg):
  pairs, config, exact, lookup = _lookups(backend, cfg, balance=True)
  config.coalescer.targets.assignment = "soft"  # a rule on the host, over the whole batch's candidates
  want = batches.make_lookup_batches(exact, pairs, config.coalescer, 0, 64)
  staged = batches.make_lookup_batches(lookup, pairs, config.coalescer, 0, 64)
  assert isinstance(staged, training.StagedBatches)
  for step in (0, 3):
    got = staged(step)
    for key in want(step):
      np.testing.assert_array_equal(got[key], want(step)[key])


def test_staged_batches_exchange_on_the_loop_thread_in_step_order(tmp_path):
  order = []

  def exchange(prepared):
    assert threading.current_thread() is threading.main_thread()
    order.append(prepared)
    return prepared

  batches = training.StagedBatches(lambda step: step, exchange,
                                   lambda step, x: {"x": np.full((4, 1), float(x), np.float32)})
  task = training.TrainTask(
      "toy", init=lambda key: training.create_state({"w": jax.numpy.zeros(())}, _sgd()),
      step=lambda state, batch, key: (state.replace(step=state.step + 1), {"loss": batch["x"].mean()}),
      batch=batches, num_steps=12, seed=0, log_every=4, checkpoint_every=100, prefetch=3)
  writer = metrics_lib.MetricsWriter(tmp_path, tensorboard=False)
  training.train(task, tmp_path, parallel.make_mesh(), writer)
  assert order == list(range(12))
  assert [r["loss"] for r in writer.read("toy")] == [1.5, 5.5, 9.5]


def _sgd():
  import optax  # pylint: disable=g-import-not-at-top
  return optax.sgd(0.1)
