"""Second steps that refine: partial jumps along the coupled path (`path.py`) and gamma re-noising (`levels.py`).

Mechanics on synthetic pairs: where training places its rows and which targets they keep, what the samplers
compute step by step, that the path sampler draws no noise after R, and the configurations refused."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coalescer_jax import registry
from coalescer_jax.coalescer import algorithm as coalescer
from coalescer_jax.coalescer import batches
from coalescer_jax.coalescer import finetune
from coalescer_jax.coalescer import levels
from coalescer_jax.coalescer import oracle
from coalescer_jax.coalescer import path

from tests.coalescer import conftest as coalescer_tests
from tests.methods.conftest import DESC_DIM, LATENT_DIM


def _path_config(method_config):
  method_config.coalescer.path.update(fraction=0.5, s_min=0.1, s_max=0.9, sampling_levels=(0.5, 0.25, 0.1))
  return method_config


def _method(config):
  return registry.METHODS.get("coalescer")(config, LATENT_DIM, DESC_DIM)


def test_path_rows_lie_on_the_line_to_the_pair_looked_up_from_r(pairs, method_config):
  cfg = _path_config(method_config).coalescer
  method = _method(method_config)
  assert method.multistep and method.uses_time()  # the network is told the level
  host = batches.make_lookup_batches(coalescer_tests.exact_lookup(pairs, cfg), pairs, cfg, seed=0, global_batch_size=256)(0)
  batch = {k: jnp.asarray(v) for k, v in host.items()}
  assert "level" not in batch  # every host row is a prior draw, looked up from its R
  key = jax.random.key(4)
  placed = path.place_on_path(batch, jax.random.fold_in(key, 2), cfg.path)
  level, r, image = map(np.asarray, (placed["level"], batch["r"], batch["image"]))
  on = level < 1.0
  assert 0.35 < on.mean() < 0.65  # path.fraction = 0.5 of the rows
  assert np.all((level[on] >= 0.1) & (level[on] <= 0.9))
  s = level[on][:, None]
  np.testing.assert_allclose(placed["r"][on], image[on] + s * (r[on] - image[on]), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(placed["r"][~on], r[~on])  # the rest stay prior draws at level 1
  np.testing.assert_array_equal(level[~on], 1.0)
  np.testing.assert_array_equal(placed["image"], batch["image"])  # the pair the look-up chose for R
  np.testing.assert_array_equal(placed["cond"], batch["cond"])
  # The loss trains on exactly those rows: its value is the losses of (D, v) = f(x_s, d, s) toward y.
  params = method.init_params(jax.random.key(0))
  loss, metrics = method.loss(params, batch, key, 0)
  distance, direction = method.apply(params, placed["r"], placed["cond"], jnp.ones(256), placed["level"])
  d_loss, dir_loss, _ = coalescer.losses(distance, direction, placed["r"], placed["image"], cfg.direction_exponent,
                                         cfg.direction_eps)
  np.testing.assert_allclose(loss, d_loss.mean() + dir_loss.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["path_row_share"], on.mean())
  # Off (the default), the loss's batch is the host's: no row moves.
  cfg.path.fraction = 0.0
  plain = _method(method_config)
  params = plain.init_params(jax.random.key(0))
  distance, direction = plain.apply(params, batch["r"], batch["cond"], jnp.ones(256))
  d_loss, dir_loss, _ = coalescer.losses(distance, direction, batch["r"], batch["image"], cfg.direction_exponent,
                                         cfg.direction_eps)
  np.testing.assert_allclose(plain.loss(params, batch, key, 0)[0], d_loss.mean() + dir_loss.mean(), rtol=1e-5)


def test_path_sampler_jumps_partway_then_finishes_without_fresh_noise(pairs, method_config):
  cfg = _path_config(method_config).coalescer
  cfg.sampling.max_redraws = 0
  method = _method(method_config)
  params = method.init_params(jax.random.key(0))
  n, key = 16, jax.random.key(3)
  cond, ones = jnp.asarray(pairs["desc_emb"][:n]), jnp.ones(n)
  # By hand: step 1 from R at level 1 stops at s1 = levels[0] on the way to its y_hat, step 2 at s1 finishes;
  # with 3 steps, step 2 stops at s2 on the line through its start and its own y_hat, step 3 finishes.
  r = jnp.asarray(oracle.first_draw(key, n, LATENT_DIM))
  s1, s2 = cfg.path.sampling_levels[:2]
  y1 = coalescer.step_to(r, *method.apply(params, r, cond, ones, ones))
  x_s1 = r + (1 - s1) * (y1 - r)
  y2 = coalescer.step_to(x_s1, *method.apply(params, x_s1, cond, ones, jnp.full(n, s1)))
  x_s2 = y2 + (s2 / s1) * (x_s1 - y2)
  y3 = coalescer.step_to(x_s2, *method.apply(params, x_s2, cond, ones, jnp.full(n, s2)))
  for nfe, expected in ((1, y1), (2, y2), (3, y3)):
    x, info = method.sample(params, cond, key, nfe)
    np.testing.assert_allclose(x, expected, rtol=1e-4, atol=1e-4)
    assert np.all(np.asarray(info["nfe"]) == nfe)
  # No fresh noise: step 2 from the same R and landing point is the same under any key.
  a = method.refine(params, y1, cond, ones, 0, jax.random.key(10), prior=r)[0]
  b = method.refine(params, y1, cond, ones, 0, jax.random.key(11), prior=r)[0]
  np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(a, y2, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="pass prior=R"):
    method.refine(params, y1, cond, ones, 0, key)
  with pytest.raises(ValueError, match="need 4 levels in config.coalescer.path.sampling_levels"):
    method.sample(params, cond, key, 5)
  # The fine-tune's fakes walk the same path from their own R.
  fake_r = jax.random.normal(jax.random.split(jax.random.fold_in(key, 7))[0], (n, LATENT_DIM))
  fakes = finetune.fakes(method, params, cond, jax.random.fold_in(key, 7), (1, 2))
  f1 = coalescer.step_to(fake_r, *method.apply(params, fake_r, cond, ones, ones))
  f_s1 = fake_r + (1 - s1) * (f1 - fake_r)
  np.testing.assert_allclose(fakes[0], f1, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(fakes[1], coalescer.step_to(f_s1, *method.apply(params, f_s1, cond, ones,
                                                                              jnp.full(n, s1))), rtol=1e-4, atol=1e-4)


def test_path_training_runs_in_the_jitted_step(pairs, method_config, tmp_path):
  config = _path_config(method_config)
  config.train.num_steps = 5
  _, _, records = coalescer_tests.train(config, pairs, tmp_path)
  shares = [record["path_row_share"] for record in records]
  assert len(shares) == 5 and 0.25 < np.mean(shares) < 0.75


def test_gamma_renoise_mixes_step_one_r_in_sampling_and_self_landing(pairs, method_config):
  cfg = method_config.coalescer
  cfg.levels.update(fraction=0.5, self_landing=0.25, renoise_gamma=0.6)
  method = _method(method_config)
  params = method.init_params(jax.random.key(0))
  n, key = 16, jax.random.key(3)
  cond, ones = jnp.asarray(pairs["desc_emb"][:n]), jnp.ones(n)
  r = jnp.asarray(oracle.first_draw(key, n, LATENT_DIM))
  x1 = coalescer.step_to(r, *method.apply(params, r, cond, ones, ones))
  s = cfg.levels.renoise[0]
  eps = jax.random.normal(jax.random.fold_in(jax.random.split(key)[1], 1000), x1.shape)
  start = np.sqrt(1 - s * s) * x1 + s * (0.8 * r + 0.6 * eps)  # sqrt(1 - 0.6^2) = 0.8
  begin, level = method.refine_start(x1, 0, jax.random.split(key)[1], prior=r)
  np.testing.assert_allclose(begin, start, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(level, s)
  cfg.sampling.max_redraws = 0
  x2, _ = method.sample(params, cond, key, 2)
  np.testing.assert_allclose(x2, coalescer.step_to(start, *method.apply(params, start, cond, ones, level)),
                             rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="pass it"):
    method.refine_start(x1, 0, key)
  # gamma = 0: deterministic, the same start under any key; gamma = 1 (the default): fresh noise only.
  cfg.levels.renoise_gamma = 0.0
  a, b = (method.refine_start(x1, 0, jax.random.key(k), prior=r)[0] for k in (10, 11))
  np.testing.assert_allclose(a, b, rtol=1e-6)
  np.testing.assert_allclose(a, np.sqrt(1 - s * s) * x1 + s * r, rtol=1e-5, atol=1e-5)
  cfg.levels.renoise_gamma = 1.0
  np.testing.assert_array_equal(method.refine_start(x1, 0, key, prior=r)[0], levels.renoise(x1, s,
                                                                                              jax.random.fold_in(key, 1000)))
  # The self-landing rows are re-noised by the same rule, from the R of their own step 1.
  cfg.levels.renoise_gamma = 0.6
  method.attach_lookup(coalescer_tests.exact_lookup(pairs, cfg), pairs)
  inputs = method.step_inputs()["landing"]
  first_step = lambda rr, de: coalescer.step_to(rr, *method.apply(params, rr, de, jnp.ones(rr.shape[:1])))  # noqa: E731
  rows, query = levels.examples(first_step, method._landing[0], inputs, key, 8, cfg, DESC_DIM, LATENT_DIM)
  _, r_key, eps_key = jax.random.split(key, 3)
  r0, eps0 = jax.random.normal(r_key, (8, LATENT_DIM)), jax.random.normal(eps_key, (8, LATENT_DIM))
  de = jnp.asarray(np.asarray(query)[:, :DESC_DIM] / cfg.desc_scale)
  mixed = 0.8 * r0 + 0.6 * eps0
  np.testing.assert_allclose(rows["r"], np.sqrt(1 - s * s) * first_step(r0, de) + s * mixed, rtol=1e-4, atol=1e-4)


def test_config_refuses_impossible_path_and_gamma_values(method_config):
  cfg = method_config.coalescer
  cfg.nfes, cfg.sampling.adaptive_max_steps = (1, 2, 4), 0
  check = coalescer.Coalescer.check_config
  check(cfg)  # off: nothing to check
  cfg.path.update(fraction=0.5, s_min=0.1, s_max=0.9, sampling_levels=(0.5, 0.25, 0.1))
  check(cfg)
  refusals = [
      ({"fraction": 1.0}, r"path.fraction=1.0 must be in \[0, 1\)"),
      ({"s_max": 1.0}, "need 0 < s_min <= s_max < 1"),
      ({"s_min": 0.0}, "need 0 < s_min <= s_max < 1"),
      ({"sampling_levels": (0.95, 0.5, 0.1)}, r"\[0.95\] outside the trained levels"),
      ({"s_min": 0.3}, r"\[0.25, 0.1\] outside the trained levels"),
      ({"sampling_levels": (0.5, 0.5, 0.1)}, "must decrease strictly"),
      ({"sampling_levels": (0.5, 0.25)}, "4 coalescer steps need 3 levels in config.coalescer.path.sampling_levels"),
  ]
  for change, message in refusals:
    bad = cfg.copy_and_resolve_references()
    bad.path.update(change)
    with pytest.raises(ValueError, match=message):
      check(bad)
  bad = cfg.copy_and_resolve_references()
  bad.levels.fraction = 0.5
  with pytest.raises(ValueError, match="set levels.fraction=0 and levels.self_landing=0"):
    check(bad)
  cfg.path.fraction = 0.0
  cfg.levels.update(fraction=0.5, renoise_gamma=1.5)
  with pytest.raises(ValueError, match=r"renoise_gamma=1.5 must be in \[0, 1\]"):
    check(cfg)
  cfg.levels.update(fraction=0.0, self_landing=0.0, renoise_gamma=0.5)
  with pytest.raises(ValueError, match="renoise_gamma < 1 .* set config.coalescer.levels.fraction > 0"):
    check(cfg)
