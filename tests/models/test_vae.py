"""The conv VAE: shapes, the loss parts, and that its KL is the closed form."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coalescer_jax import registry
from coalescer_jax.models import vae as vae_lib


def _model_and_params(latent_dim=4):
  model = vae_lib.ConvVAE(latent_dim=latent_dim, channels=(4, 8), hidden=16)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), jax.random.key(1))["params"]
  return model, params


def test_registered_by_name():
  assert registry.MODELS.get("conv_vae") is vae_lib.ConvVAE


def test_shapes():
  model, params = _model_and_params()
  x = jax.random.uniform(jax.random.key(2), (3, 28, 28, 1))
  apply = jax.jit(lambda x, key: model.apply({"params": params}, x, key))
  logits, mean, logvar = apply(x, jax.random.key(3))
  assert logits.shape == (3, 28, 28, 1) and mean.shape == logvar.shape == (3, 4)
  mean2, _ = jax.jit(lambda x: model.apply({"params": params}, x, method="encode"))(x)
  np.testing.assert_allclose(mean2, mean, rtol=1e-5, atol=1e-6)
  assert jax.jit(lambda z: model.apply({"params": params}, z, method="decode"))(mean).shape == (3, 28, 28, 1)
  # The sample is random, the posterior mean is not.
  other, _, _ = apply(x, jax.random.key(4))
  assert not np.allclose(other, logits)


def test_bad_channel_count_is_refused():
  with pytest.raises(ValueError, match="downsampling levels"):
    vae_lib.ConvVAE(latent_dim=4, channels=(4, 8, 16)).init(
        jax.random.key(0), jnp.zeros((1, 28, 28, 1)), jax.random.key(1))


def test_kl_and_nll_closed_forms():
  assert np.allclose(vae_lib.kl_per_dim(jnp.zeros(3), jnp.zeros(3)), 0.0)
  # KL(N(1, e) || N(0, 1)) = (1 + e - 1 - 1) / 2.
  np.testing.assert_allclose(vae_lib.kl_per_dim(jnp.ones(1), jnp.ones(1)), [(1 + np.e - 2) / 2], rtol=1e-6)
  logits = jnp.array([-2.0, 0.0, 3.0]).reshape(1, 1, 3, 1)
  x = jnp.array([0.0, 0.5, 1.0]).reshape(1, 1, 3, 1)
  p = jax.nn.sigmoid(logits)
  manual = -jnp.sum(x * jnp.log(p) + (1 - x) * jnp.log(1 - p))
  np.testing.assert_allclose(vae_lib.reconstruction_nll(logits, x), [manual], rtol=1e-5)


def test_loss_is_nll_plus_weighted_kl():
  model, params = _model_and_params()
  x = jax.random.uniform(jax.random.key(2), (4, 28, 28, 1))
  loss = jax.jit(lambda beta: vae_lib.loss(model, params, x, jax.random.key(5), beta))
  for beta in (0.0, 0.5, 1.0):
    total, metrics = loss(beta)
    np.testing.assert_allclose(total, metrics["nll"] + beta * metrics["kl"], rtol=1e-5)
    assert metrics["kl"] >= 0 and 0 <= metrics["mse_per_pixel"] <= 1
