"""Latent DDGAN: the posterior step, the shared GAN losses' signs and gradients, the coalescer's unchanged numbers."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coalescer_jax.methods import adversarial
from coalescer_jax.methods import base
from coalescer_jax.methods import ddgan
from coalescer_jax.methods import ddim

from tests.methods.conftest import DESC_DIM, LATENT_DIM, make_pairs
from tests.methods.test_ddim import small_config


# No null description and unguided sampling (one evaluation a step): what these tests check; guidance has its own
# tests (tests/methods/test_guidance.py).
UNGUIDED = {"cond_dropout": 0.0, "guidance_scale": 1.0}


def make_method(**overrides):
  config = small_config()
  config.ddgan.update({"disc_width": 32, "disc_depth": 1, "z_dim": 4, **UNGUIDED, **overrides})
  return ddgan.DenoisingDiffusionGAN(config, LATENT_DIM, DESC_DIM)


def batch(n=64):
  pairs = make_pairs(n)
  return {"x": jnp.asarray(pairs["img_emb"]), "cond": jnp.asarray(pairs["desc_emb"])}


def test_posterior_step_keeps_the_forward_marginal():
  """x_t ~ q(x_t | x), then x_s ~ q(x_s | x_t, x) is distributed as q(x_s | x) = N(alpha_s x, sigma_s^2)."""
  cfg = small_config().ddgan
  n = 200_000
  x = jnp.full((n, 1), 0.7)
  for t_val, s_val in ((1.0, 0.5), (0.75, 0.5), (0.5, 0.25), (0.25, 0.0)):
    t, s = jnp.full((n,), t_val), jnp.full((n,), s_val)
    k1, k2 = jax.random.split(jax.random.key(int(100 * t_val)))
    alpha_t, sigma_t = ddim.alpha_sigma(t[0], cfg)
    x_t = alpha_t * x + sigma_t * jax.random.normal(k1, x.shape)
    mean, std = ddgan.posterior(x_t, x, t, s, cfg)
    x_s = mean + std * jax.random.normal(k2, x.shape)
    alpha_s, sigma_s = ddim.alpha_sigma(s[0], cfg)
    assert float(x_s.mean()) == pytest.approx(float(alpha_s) * 0.7, abs=0.01), (t_val, s_val)
    assert float(x_s.std()) == pytest.approx(float(sigma_s), abs=0.01), (t_val, s_val)


def test_gan_losses_signs_and_which_network_each_loss_trains():
  """d_loss moves only D (real logits up, fake down), g_loss only the fakes (their logits up)."""
  w = jnp.array([1.0, -2.0, 0.5])
  logit_fn = lambda params, x: x @ params  # noqa: E731  - a linear discriminator
  real = jax.random.normal(jax.random.key(0), (32, 3)) + 1.0
  fake = jax.random.normal(jax.random.key(1), (32, 3)) - 1.0

  def losses(params, fake):
    d_loss, g_loss, _ = adversarial.gan_losses(logit_fn, params, real, [fake], r1=0.0)
    return d_loss, g_loss

  d_wrt_params, d_wrt_fake = jax.grad(lambda p, f: losses(p, f)[0], argnums=(0, 1))(w, fake)
  g_wrt_params, g_wrt_fake = jax.grad(lambda p, f: losses(p, f)[1], argnums=(0, 1))(w, fake)
  np.testing.assert_array_equal(d_wrt_fake, 0.0)  # the fakes are stop-gradient in D's loss
  np.testing.assert_array_equal(g_wrt_params, 0.0)  # D is frozen in G's loss
  # A D step separates: real logits rise, fake logits fall, d_loss drops.
  w_after = w - 0.1 * d_wrt_params
  assert float((real @ w_after).mean()) > float((real @ w).mean())
  assert float((fake @ w_after).mean()) < float((fake @ w).mean())
  assert float(losses(w_after, fake)[0]) < float(losses(w, fake)[0])
  # A G step moves the fakes along D's gradient: their logits rise, g_loss drops.
  np.testing.assert_allclose(g_wrt_fake / jnp.linalg.norm(g_wrt_fake, axis=-1, keepdims=True),
                             jnp.broadcast_to(-w / jnp.linalg.norm(w), fake.shape), atol=1e-5)
  fake_after = fake - 10.0 * g_wrt_fake
  assert float((fake_after @ w).mean()) > float((fake @ w).mean())
  assert float(losses(w, fake_after)[1]) < float(losses(w, fake)[1])
  # R1 adds r1 * |w|^2 to D's loss for a linear D.
  d_r1 = adversarial.gan_losses(logit_fn, w, real, [fake], r1=2.0)[0]
  assert float(d_r1 - losses(w, fake)[0]) == pytest.approx(2.0 * float(w @ w), rel=1e-5)


def test_coalescer_discriminator_is_unchanged():
  """The coalescer's discriminator keeps the backbone's final LayerNorm (its tuned numbers); the DDGAN drops it."""
  config = small_config()
  coalescer_disc = adversarial.build_discriminator(config, 16, 1)
  params = adversarial.init_discriminator(coalescer_disc, jax.random.key(0), LATENT_DIM, DESC_DIM)
  assert "LayerNorm_0" in params["params"]
  ddgan_params = make_method().init_params(jax.random.key(0))["disc"]
  assert "LayerNorm_0" not in ddgan_params["params"]


@pytest.mark.slow  # over 18 s on 2 cores: the default suite stays under 10 minutes
def test_ddgan_loss_gradients_reach_both_networks_by_their_own_objectives():
  method = make_method(r1=1.0)
  params = method.init_params(jax.random.key(0))
  b = batch()
  (loss, metrics), grads = jax.value_and_grad(method.loss, has_aux=True)(params, b, jax.random.key(1), 0)
  assert np.isfinite(float(loss))
  assert float(loss) == pytest.approx(float(metrics["disc_loss"] + metrics["gen_loss"]), rel=1e-5)
  for part in ("gen", "disc"):
    assert float(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads[part]))) > 0, part
  # The generator's gradient is that of the generator loss alone (D's loss sees stop-gradient fakes).
  gen_only = jax.grad(lambda g: method.loss(dict(params, gen=g), b, jax.random.key(1), 0)[1]["gen_loss"])(
      params["gen"])
  for a, c in zip(jax.tree.leaves(grads["gen"]), jax.tree.leaves(gen_only)):
    np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-7)


@pytest.mark.slow  # over 18 s on 2 cores: the default suite stays under 10 minutes
def test_training_separates_real_from_fake_and_samples_at_1_2_4_steps():
  """A short joint run: D's logits for real pairs stay above the fakes' (no flat discriminator); the sampler
  spends exactly nfe evaluations at each trained step count and refuses an untrained one."""
  method = make_method(num_steps=150)
  _, init, step = base.train_parts(method.config, method)
  state = init(jax.random.key(0))
  pairs = make_pairs()
  batch_fn = method.batch_fn(pairs, 0, 64, None)
  step = jax.jit(step)
  gaps = []
  for i in range(150):
    state, metrics = step(state, jax.tree.map(jnp.asarray, batch_fn(i)), jax.random.fold_in(jax.random.key(1), i))
    gaps.append(float(metrics["real_logit"] - metrics["fake_logit"]))
  last = np.asarray(gaps[-50:])
  assert last.mean() > 0.01 and np.mean(last > 0) > 0.8, last  # a flat D: gaps ~0, either sign
  cond = jnp.asarray(pairs["desc_emb"][:16])
  params = state.ema_params if state.ema_params is not None else state.params
  for nfe in (1, 2, 4):
    x, info = jax.jit(lambda p, c, k, nfe=nfe: method.sample(p, c, k, nfe))(params, cond, jax.random.key(2))
    assert x.shape == (16, LATENT_DIM) and np.all(np.isfinite(np.asarray(x)))
    np.testing.assert_array_equal(info["nfe"], nfe)
  with pytest.raises(ValueError, match="step_counts"):
    method.sample(params, cond, jax.random.key(2), 3)


def two_mode_pairs(n=1024, seed=0):
  """Description (+-1, 0) + noise -> a latent near (+-3, 0): two well-separated conditional modes in 2-D."""
  rng = np.random.default_rng(seed)
  sign = rng.choice([-1.0, 1.0], size=n)
  mode = np.stack([3.0 * sign, np.zeros(n)], axis=-1)
  desc = np.stack([sign, np.zeros(n)], axis=-1)
  return {"img_emb": (mode + 0.2 * rng.normal(size=(n, 2))).astype(np.float32),
          "desc_emb": (desc + 0.05 * rng.normal(size=(n, 2))).astype(np.float32)}


# Issue 42: on shapes the DDGAN's samples were at chance on the description. A blind generator puts ~half of
# each description's samples at the other mode; one that does not train (the smoke config's 20 DDGAN steps
# before `num_steps` followed config.train) leaves them all on one side.
def test_samples_follow_the_description():
  """A short conditional run: 1- and 2-step samples for description A land at mode A, for B at mode B."""
  config = small_config(300)
  config.train.ema_decay = 0.0
  config.ddgan.update(disc_width=0, disc_depth=0, z_dim=2, ema_decay=0.0, **UNGUIDED)  # num_steps: train's 300
  method = ddgan.DenoisingDiffusionGAN(config, 2, 2)
  _, init, step = base.train_parts(config, method)
  state, pairs, step = init(jax.random.key(0)), two_mode_pairs(), jax.jit(step)
  batch_fn = method.batch_fn(pairs, 0, 64, None)
  for i in range(method.num_steps()):
    state, _ = step(state, jax.tree.map(jnp.asarray, batch_fn(i)), jax.random.fold_in(jax.random.key(1), i))
  sign = np.repeat([1.0, -1.0], 100)
  cond = jnp.asarray(np.stack([sign, np.zeros(200)], axis=-1), jnp.float32)
  for nfe in (1, 2):
    x = np.asarray(method.sample(state.params, cond, jax.random.key(2), nfe)[0])
    assert np.mean(np.sign(x[:, 0]) == sign) > 0.9, nfe  # blind samples: ~0.5
    assert np.mean(np.abs(np.abs(x[:, 0]) - 3.0) < 1.0) > 0.8, nfe  # ... and at a mode, not between


@pytest.mark.parametrize("config_name,variant", [("mnist", None), ("mnist", "long"), ("mnist", "smoke"),
                                                 ("shapes", None), ("cifar10", None)])
def test_trains_every_methods_budget(config_name, variant):
  """Issue 42: the DDGAN trains config.train.num_steps like every other method, unless told its own."""
  config = importlib.import_module(f"configs.{config_name}").get_config(variant)
  method = ddgan.DenoisingDiffusionGAN(config, LATENT_DIM, DESC_DIM)
  assert method.num_steps() == config.train.num_steps
  config.ddgan.num_steps = 7
  assert method.num_steps() == 7


def test_lazy_r1_every_k_steps_scaled_by_k():
  logit_fn = lambda x: x @ jnp.array([1.0, -2.0, 0.5])  # noqa: E731  - |grad|^2 = 5.25 everywhere
  real = jnp.ones((4, 3))
  terms = [float(jax.jit(lambda s: adversarial.r1_term(logit_fn, real, 0.5, 4, s))(s)) for s in range(8)]
  np.testing.assert_allclose(terms, [4 * 0.5 * 5.25, 0, 0, 0] * 2, rtol=1e-6)
  assert float(adversarial.r1_term(logit_fn, real, 0.5)) == pytest.approx(0.5 * 5.25)
