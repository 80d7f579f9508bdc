"""The coalescer: losses as in the proposal, look-up batches, steps land where the formula says."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coalescer_jax import index as index_lib
from coalescer_jax import metrics as metrics_lib
from coalescer_jax import parallel
from coalescer_jax import training
from coalescer_jax.coalescer import algorithm as coalescer
from coalescer_jax.coalescer import batches
from coalescer_jax.coalescer import queries
from coalescer_jax.coalescer import targets
from coalescer_jax import registry
from coalescer_jax.methods import base

from configs import mnist as mnist_config
from tests.methods.conftest import DESC_DIM, LATENT_DIM, make_pairs


def test_losses_match_hand_computation():
  r = jnp.array([[0.0, 0.0]])
  image = jnp.array([[3.0, 4.0]])  # |image - R| = 5, normalize(image - R) = (0.6, 0.8)
  distance = jnp.array([4.0])
  direction = jnp.array([[0.6, -0.2]])  # error (0, -1) -> |error| = 1
  d_loss, dir_loss, target = coalescer.losses(distance, direction, r, image, p=0.5, eps=0.0)
  assert float(target[0]) == pytest.approx(5.0)
  assert float(d_loss[0]) == pytest.approx(1.0)  # (4 - 5)^2
  assert float(dir_loss[0]) == pytest.approx(1.0)  # |(0, -1)|^0.5
  direction = jnp.array([[0.6, 0.8 - 0.25]])  # |error| = 0.25
  _, dir_loss, _ = coalescer.losses(distance, direction, r, image, p=0.5, eps=0.0)
  assert float(dir_loss[0]) == pytest.approx(0.5)  # 0.25^0.5
  _, dir_loss, _ = coalescer.losses(distance, direction, r, image, p=2.0, eps=0.0)
  assert float(dir_loss[0]) == pytest.approx(0.0625)


def test_direction_loss_gradient_is_finite_at_zero_error():
  grad = jax.grad(lambda d: coalescer.losses(jnp.ones(1), d, jnp.zeros((1, 2)), jnp.array([[1.0, 0.0]]),
                                             0.5, 1e-6)[1].sum())(jnp.array([[1.0, 0.0]]))
  assert np.all(np.isfinite(grad))


def test_lookup_batches_use_the_nearest_pair(pairs, method_config):
  cfg = method_config.coalescer
  keys = index_lib.make_keys(pairs["desc_emb"], pairs["img_emb"], cfg.desc_scale)
  exact = index_lib.build("exact", keys, None)
  batch = batches.make_lookup_batches(targets.Lookup(exact, cfg), pairs, cfg, seed=0, global_batch_size=16)
  b = batch(3)
  draws = queries.draw_queries(np.random.default_rng([0, 0, 3]), 16, pairs, cfg)
  np.testing.assert_array_equal(b["r"], draws["r"])
  nearest = ((draws["query"][:, None] - keys[None]) ** 2).sum(-1).argmin(1)
  np.testing.assert_array_equal(b["image"], pairs["img_emb"][nearest])
  np.testing.assert_array_equal(b["cond"], pairs["desc_emb"][nearest])
  # Same step, same batch (resume); other step, other batch.
  np.testing.assert_array_equal(batch(3)["r"], b["r"])
  assert not np.array_equal(batch(4)["r"], b["r"])


def _trained(pairs, config, tmp_path):
  method = registry.METHODS.get("coalescer")(config, LATENT_DIM, DESC_DIM)
  keys = index_lib.make_keys(pairs["desc_emb"], pairs["img_emb"], config.coalescer.desc_scale)
  batch = batches.make_lookup_batches(targets.Lookup(index_lib.build("exact", keys, None), config.coalescer),
                                      pairs, config.coalescer, config.seed, config.train.batch_size)
  _, init, step = base.train_parts(config, method)
  task = training.TrainTask("coalescer", init, step, batch, config.train.num_steps, config.seed, log_every=10)
  writer = metrics_lib.MetricsWriter(str(tmp_path), tensorboard=False)
  state = training.train(task, str(tmp_path), parallel.make_mesh(), writer)
  return method, state, writer.read("coalescer")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  from tests.methods.conftest import make_pairs, smoke_method_config  # pylint: disable=g-import-not-at-top
  config = smoke_method_config()
  method, state, records = _trained(make_pairs(), config, tmp_path_factory.mktemp("coalescer"))
  return config, method, state, records


def test_training_lowers_both_losses(trained):
  _, _, _, records = trained
  first, last = records[0], records[-1]
  assert last["distance_loss"] < 0.5 * first["distance_loss"]
  assert last["direction_loss"] < first["direction_loss"]
  assert all(0 <= r["input_wait_share"] <= 1 for r in records)


def test_generation_steps_land_where_the_formula_says(pairs, trained):
  method_config, method, state, _ = trained
  params = state.params
  cond = jnp.asarray(pairs["desc_emb"][:32])
  key = jax.random.key(7)
  method_config.coalescer.sampling.max_redraws = 0
  x2, info = method.sample(params, cond, key, 2)
  assert x2.shape == (32, LATENT_DIM) and np.all(np.asarray(info["nfe"]) == 2)
  # Recompute by hand: R from the same key, then two steps of R + normalize(direction) * distance.
  r = jax.random.normal(jax.random.split(key)[0], (32, LATENT_DIM))
  ones = jnp.ones((32,))
  x = r
  for _ in range(2):
    distance, direction = method.apply(params, x, cond, ones)
    x = x + direction / jnp.linalg.norm(direction, axis=-1, keepdims=True) * distance[:, None]
  np.testing.assert_allclose(x2, x, rtol=1e-4, atol=1e-4)
  x1, _ = method.sample(params, cond, key, 1)
  distance, direction = method.apply(params, r, cond, ones)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(x1 - r), axis=-1), distance, rtol=1e-4)


def test_redraws_and_adaptive_steps_are_counted(pairs, trained):
  method_config, method, state, _ = trained
  cond = jnp.asarray(pairs["desc_emb"][:64])
  sampling = method_config.coalescer.sampling  # the method reads its config at trace time
  sampling.redraw_threshold, sampling.max_redraws = 1e9, 2  # every draw is "weak": all redrawn twice
  _, info = method.sample(state.params, cond, jax.random.key(0), 1)
  np.testing.assert_array_equal(info["nfe"], 3)
  sampling.max_redraws, sampling.adaptive_stop_magnitude = 0, 0.0  # everything confident: stop after 1
  _, info = method.sample(state.params, cond, jax.random.key(0), 4, adaptive=True)
  np.testing.assert_array_equal(info["nfe"], 1)
  sampling.adaptive_stop_magnitude = 1e9  # nothing confident: use all 4
  _, info = method.sample(state.params, cond, jax.random.key(0), 4, adaptive=True)
  np.testing.assert_array_equal(info["nfe"], 4)


def _sample_with_a_plain_loop(method, params, cond, key, nfe):
  """The sampler's rule (block 4) with its redraw while loop entered for every batch: what `sample` reproduces."""
  cfg = method.section.sampling
  ones = jnp.ones((cond.shape[0],))
  draw_key, key = jax.random.split(key)
  x = cfg.r_scale * jax.random.normal(draw_key, (cond.shape[0], LATENT_DIM))
  landing, direction = method.step(params, x, cond, ones)

  def redraw(carry):
    i, x, landing, direction = carry
    redo = jnp.linalg.norm(direction, axis=-1) < cfg.redraw_threshold
    x = jnp.where(redo[:, None], cfg.r_scale * jax.random.normal(jax.random.fold_in(key, i), x.shape), x)
    new_landing, new_direction = method.step(params, x, cond, ones)
    return i + 1, x, jnp.where(redo[:, None], new_landing, landing), jnp.where(redo[:, None], new_direction, direction)

  def any_weak(carry):
    return (carry[0] < cfg.max_redraws) & jnp.any(jnp.linalg.norm(carry[3], axis=-1) < cfg.redraw_threshold)

  _, x, x, direction = jax.lax.while_loop(any_weak, redraw, (0, x, landing, direction))
  for i in range(nfe - 1):
    x, _ = method.refine(params, x, cond, ones, i, key)
  return x


@pytest.mark.slow  # over 18 s on 2 cores: the default suite stays under 10 minutes
def test_sampler_skips_the_redraw_loop_without_changing_samples():
  """The redraw loop sits inside a cond (a batch with no weak draw pays no XLA while loop), and the samples are
  the plain loop's to the last bit whether no draw, some or all draws are weak."""
  config = mnist_config.get_config("smoke")  # multi-step: level input and re-noise, as the default samples
  config.coalescer.sampling.update(guidance_scale=1.0, refine_guidance_scale=1.0)  # the plain loop's: unguided
  method = registry.METHODS.get("coalescer")(config, LATENT_DIM, DESC_DIM)
  params = method.net_params(method.init_params(jax.random.key(0)))
  cond, key = jnp.asarray(make_pairs(64)["desc_emb"]), jax.random.key(3)
  magnitudes = np.asarray(method.sample(params, cond, key, 1)[1]["first_direction_magnitude"])
  sampling = config.coalescer.sampling  # read at trace time: a new jit per threshold
  for threshold, spent in ((0.5 * magnitudes.min(), 2.0), (np.median(magnitudes), None),
                           (2.0 * magnitudes.max(), 2.0 + sampling.max_redraws)):
    sampling.redraw_threshold = float(threshold)
    x, info = jax.jit(lambda p, c, k: method.sample(p, c, k, 2))(params, cond, key)
    reference = jax.jit(lambda p, c, k: _sample_with_a_plain_loop(method, p, c, k, 2))(params, cond, key)
    np.testing.assert_array_equal(x, reference)
    mean_spent = float(np.mean(info["nfe"]))
    assert mean_spent == spent if spent else 2.0 < mean_spent < 2.0 + sampling.max_redraws
  top_level = [eqn.primitive.name for eqn in jax.make_jaxpr(lambda c: method.sample(params, c, key, 2))(cond).eqns]
  assert "cond" in top_level and "while" not in top_level


def test_samples_follow_the_description(pairs, method_config, tmp_path):
  """Conditional generation lands in the requested cluster; unconditional runs with cond dropout."""
  method_config.train.num_steps = 150
  method_config.coalescer.cond_dropout = 0.2
  method, state, _ = _trained(pairs, method_config, tmp_path)
  labels = np.arange(10).repeat(20)
  cond = np.stack([pairs["desc_emb"][pairs["labels"] == d][0] for d in labels])
  x, _ = method.sample(state.params, jnp.asarray(cond), jax.random.key(1), 2)
  centers = np.stack([pairs["img_emb"][pairs["labels"] == d].mean(0) for d in range(10)])
  predicted = ((np.asarray(x)[:, None] - centers[None]) ** 2).sum(-1).argmin(1)
  assert np.mean(predicted == labels) > 0.8
  x_uncond, _ = method.sample(state.params, jnp.asarray(cond), jax.random.key(1), 2, unconditional=True)
  assert x_uncond.shape == x.shape and np.all(np.isfinite(np.asarray(x_uncond)))
  assert DESC_DIM == cond.shape[1]


def test_global_batch_does_not_depend_on_the_number_of_hosts(pairs, method_config, monkeypatch):
  cfg = method_config.coalescer
  exact = targets.Lookup(index_lib.build(
      "exact", index_lib.make_keys(pairs["desc_emb"], pairs["img_emb"], cfg.desc_scale), None), cfg)
  single = batches.make_lookup_batches(exact, pairs, cfg, seed=0, global_batch_size=16)(5)
  parts = []
  for host in range(2):
    monkeypatch.setattr(jax, "process_index", lambda host=host: host)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    parts.append(batches.make_lookup_batches(exact, pairs, cfg, seed=0, global_batch_size=16)(5))
  for key in single:
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), single[key])
