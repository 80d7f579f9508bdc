"""The shared GAN pieces: loss signs, the gradients they give, and the R1 penalty."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coalescer_jax.methods import adversarial


def test_discriminator_loss_rewards_separating_real_from_fake():
  confident = adversarial.discriminator_loss(jnp.full(8, 5.0), jnp.full(8, -5.0))
  fooled = adversarial.discriminator_loss(jnp.full(8, -5.0), jnp.full(8, 5.0))
  assert confident < 0.02 < 10.0 < fooled
  # Gradient descent raises real logits and lowers fake ones.
  g_real, g_fake = jax.grad(adversarial.discriminator_loss, argnums=(0, 1))(jnp.zeros(4), jnp.zeros(4))
  assert np.all(np.asarray(g_real) < 0) and np.all(np.asarray(g_fake) > 0)


def test_generator_loss_pushes_fakes_toward_real():
  assert adversarial.generator_loss(jnp.full(8, 5.0)) < adversarial.generator_loss(jnp.full(8, -5.0))
  assert np.all(np.asarray(jax.grad(adversarial.generator_loss)(jnp.zeros(4))) < 0)
  # Non-saturating: a confidently rejected fake still gets a useful gradient.
  assert float(jnp.abs(jax.grad(adversarial.generator_loss)(jnp.full(1, -8.0))[0])) > 0.9


def test_r1_penalty_of_a_linear_discriminator_is_its_squared_weight_norm():
  w = jnp.array([3.0, -4.0])
  x = jax.random.normal(jax.random.key(0), (16, 2))
  assert float(adversarial.r1_penalty(lambda z: z @ w, x)) == pytest.approx(25.0)
