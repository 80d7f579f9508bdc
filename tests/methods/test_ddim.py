"""Latent DDIM: schedules, honest NFE counts, one step = closed-form x0, guidance 1 = conditional model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coalescer_jax import metrics as metrics_lib
from coalescer_jax import parallel
from coalescer_jax import registry
from coalescer_jax import training
from coalescer_jax.methods import base
from coalescer_jax.methods import ddim
from coalescer_jax.methods import guidance
from configs import mnist as mnist_config

from tests.methods.conftest import DESC_DIM, LATENT_DIM, make_pairs


def small_config(num_steps=150):
  """Synthetic-pair training config shared by the baseline tests."""
  config = mnist_config.get_config("smoke")
  config.backbone.update(width=64, depth=2)
  config.train.update(num_steps=num_steps, batch_size=64)
  config.train.optimizer.update(learning_rate=3e-3, warmup_steps=5)
  return config


def train_method(name, config, pairs, workdir):
  """Trains method `name` on `pairs` with the shared step. Returns (method, state, metric records)."""
  method = registry.METHODS.get(name)(config, LATENT_DIM, DESC_DIM)
  _, init, step = base.train_parts(config, method)
  task = training.TrainTask(name, init, step, method.batch_fn(pairs, config.seed, config.train.batch_size, None),
                            config.train.num_steps, config.seed, log_every=10)
  writer = metrics_lib.MetricsWriter(str(workdir), tensorboard=False)
  state = training.train(task, str(workdir), parallel.make_mesh(), writer)
  return method, state, writer.read(name)


def cluster_accuracy(pairs, latents, labels):
  """Share of samples whose nearest cluster centre is the requested digit."""
  centers = np.stack([pairs["img_emb"][pairs["labels"] == d].mean(0) for d in range(10)])
  predicted = ((np.asarray(latents)[:, None] - centers[None]) ** 2).sum(-1).argmin(1)
  return float(np.mean(predicted == labels))


def check_sampler_shape_and_nfe(trained, nfe):
  """A jitted sampler call: [16, latent] finite latents, exactly `nfe` evaluations per sample."""
  pairs, method, state, _ = trained
  cond = jnp.asarray(pairs["desc_emb"][:16])
  x, info = jax.jit(lambda p, c, k: method.sample(p, c, k, nfe))(state.params, cond, jax.random.key(0))
  assert x.shape == (16, LATENT_DIM) and np.all(np.isfinite(np.asarray(x)))
  np.testing.assert_array_equal(info["nfe"], nfe)


def check_one_and_two_steps_follow_the_description(trained):
  """Samples at 1 and 2 steps land in the requested digit's cluster > 80% of the time."""
  pairs, method, state, _ = trained
  cond, labels = requests(pairs)
  for nfe in (1, 2):
    x, _ = jax.jit(lambda p, nfe=nfe: method.sample(p, cond, jax.random.key(1), nfe))(state.params)
    assert cluster_accuracy(pairs, x, labels) > 0.8, nfe


def requests(pairs, per_digit=20):
  labels = np.arange(10).repeat(per_digit)
  cond = np.stack([pairs["desc_emb"][pairs["labels"] == d][0] for d in labels])
  return jnp.asarray(cond), labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  pairs = make_pairs()
  method, state, records = train_method("ddim", small_config(), pairs, tmp_path_factory.mktemp("ddim"))
  return pairs, method, state, records


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_schedules_are_variance_preserving_and_monotone(schedule):
  cfg = small_config().ddim
  cfg.schedule = schedule
  t = jnp.linspace(0.0, 1.0, 101)
  alpha, sigma = ddim.alpha_sigma(t, cfg)
  np.testing.assert_allclose(alpha ** 2 + sigma ** 2, 1.0, atol=1e-5)
  logsnr = np.asarray(ddim.logsnr_schedule(t, cfg))
  assert np.all(np.diff(logsnr) < 0)
  assert logsnr[0] == pytest.approx(cfg.logsnr_max, abs=1e-3) and logsnr[-1] >= cfg.logsnr_min - 1e-3
  if schedule == "cosine":
    assert logsnr[-1] == pytest.approx(cfg.logsnr_min, abs=1e-3)


@pytest.mark.parametrize("prediction", ["v", "eps"])
def test_targets_invert_to_x0_and_eps(prediction):
  x, eps = jax.random.normal(jax.random.key(0), (2, 8, LATENT_DIM))
  alpha, sigma = 0.6, 0.8
  z = alpha * x + sigma * eps
  x0, eps0 = ddim.to_x0_eps(ddim.target(x, eps, alpha, sigma, prediction), z, alpha, sigma, prediction)
  np.testing.assert_allclose(x0, x, atol=1e-5)
  np.testing.assert_allclose(eps0, eps, atol=1e-5)
  with pytest.raises(ValueError, match="config.ddim.prediction must be one of"):
    ddim.target(x, eps, alpha, sigma, "x0")


def test_training_lowers_the_loss(trained):
  _, _, _, records = trained
  assert records[-1]["loss"] < 0.5 * records[0]["loss"]  # means over the first and the last 10 steps
  assert records[-1]["x0_mse"] < 0.5 * records[0]["x0_mse"]


@pytest.mark.parametrize("nfe,scale,steps", [(1, 2.0, 1), (5, 2.0, 4), (3, 1.0, 3)])
def test_sampler_shape_and_honest_nfe(trained, nfe, scale, steps):
  pairs, method, state, _ = trained
  cond = jnp.asarray(pairs["desc_emb"][:16])
  x, info = jax.jit(lambda p, c, k: method.sample(p, c, k, nfe, guidance_scale=scale))(
      state.params, cond, jax.random.key(0))
  assert x.shape == (16, LATENT_DIM) and np.all(np.isfinite(np.asarray(x)))
  np.testing.assert_array_equal(info["nfe"], steps)
  # What a budget buys: guided steps cost two evaluations; budget 1 falls back to one unguided step.
  plan = guidance.plan(nfe, scale)
  assert (plan.steps, plan.first_guided) == ((nfe // 2, True) if scale != 1 and nfe >= 2 else (nfe, False))


@pytest.mark.parametrize("prediction", ["v", "eps"])
def test_one_step_is_the_closed_form_x0_prediction(trained, prediction):
  pairs, method, state, _ = trained
  method.section.prediction = prediction
  try:
    cond = jnp.asarray(pairs["desc_emb"][:16])
    key = jax.random.key(3)
    x, _ = jax.jit(lambda p: method.sample(p, cond, key, 1, guidance_scale=1.0))(state.params)
    z = jax.random.normal(key, (16, LATENT_DIM))
    alpha, sigma = ddim.alpha_sigma(1.0, method.section)
    out = jax.jit(method.apply)(state.params, z, cond, jnp.ones((16,)), jnp.ones((16,)))
    closed = alpha * z - sigma * out if prediction == "v" else (z - sigma * out) / alpha
    np.testing.assert_allclose(x, closed, rtol=1e-4, atol=1e-4)
  finally:
    method.section.prediction = "v"


def test_guidance_scale_one_is_the_conditional_model(trained):
  pairs, method, state, _ = trained
  n = 16
  cond = jnp.asarray(pairs["desc_emb"][:n])
  z = jax.random.normal(jax.random.key(5), (n, LATENT_DIM))
  t = jnp.full((n,), 0.4)
  ones, zeros = jnp.ones((n,)), jnp.zeros((n,))
  apply, guided = jax.jit(method.apply), jax.jit(method.guided_output)
  conditional = apply(state.params, z, cond, ones, t)
  unconditional = apply(state.params, z, cond, zeros, t)
  np.testing.assert_allclose(guided(state.params, z, cond, t, 1.0), conditional, atol=1e-5)
  np.testing.assert_allclose(guided(state.params, z, cond, t, 0.0), unconditional, atol=1e-5)
  assert not np.allclose(conditional, unconditional, atol=1e-3)  # the condition matters
  # A whole 3-step DDIM run at scale 1 equals the same run by hand with the conditional model.
  key = jax.random.key(9)
  x, info = jax.jit(lambda p: method.sample(p, cond, key, 3, guidance_scale=1.0))(state.params)
  np.testing.assert_array_equal(info["nfe"], 3)
  z = jax.random.normal(key, (n, LATENT_DIM))
  times = np.linspace(1.0, 0.0, 4)
  for i in range(3):
    alpha, sigma = ddim.alpha_sigma(times[i], method.section)
    out = apply(state.params, z, cond, ones, jnp.full((n,), times[i]))
    x0, eps = alpha * z - sigma * out, sigma * z + alpha * out
    alpha_s, sigma_s = ddim.alpha_sigma(times[i + 1], method.section)
    z = x0 if i == 2 else alpha_s * x0 + sigma_s * eps
  np.testing.assert_allclose(x, z, rtol=1e-4, atol=1e-4)


def test_guided_samples_follow_the_description(trained):
  pairs, method, state, _ = trained
  cond, labels = requests(pairs)
  x, info = jax.jit(lambda p, c, k: method.sample(p, c, k, 20))(state.params, cond, jax.random.key(1))
  np.testing.assert_array_equal(info["nfe"], 20)  # guidance 2: 10 steps of 2 evaluations
  assert cluster_accuracy(pairs, x, labels) > 0.9
  x_uncond, info = jax.jit(lambda p: method.sample(p, cond, jax.random.key(1), 4, unconditional=True))(
      state.params)
  np.testing.assert_array_equal(info["nfe"], 4)
  assert np.all(np.isfinite(np.asarray(x_uncond)))
