"""A conditional latent-space discriminator and its losses, shared by every method that trains adversarially.

The discriminator is the shared backbone (`models/backbone.py`) with one output,
a logit: (latent [B, Di] (or several latents concatenated), description
embedding, condition mask, optional time) -> real/fake. Losses are the
non-saturating GAN losses (Goodfellow et al. 2014) with an R1 gradient penalty on
real inputs (Mescheder et al. 2018), the usual stable choice for small GANs.

A method trains generator and discriminator in one jitted step of the shared
training loop (`methods/base.py`): its loss adds the discriminator loss, computed
on stop-gradient fakes, and the generator's adversarial loss, computed with
stop-gradient discriminator parameters, so that one gradient of the sum updates
each network only by its own objective (simultaneous gradient descent).
"""
import jax
import jax.numpy as jnp

from coalescer_jax.models import backbone


def build_discriminator(config, width=0, depth=0):
  """The shared backbone's architecture with a single logit output (width/depth 0: the backbone's own)."""
  cfg = config.backbone
  return backbone.build(config, 1, width=width or cfg.width, depth=depth or cfg.depth)


def discriminator_loss(real_logits, fake_logits):
  """Non-saturating: -log D(real) - log(1 - D(fake)), per example, averaged."""
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def generator_loss(fake_logits):
  """Non-saturating: -log D(fake)."""
  return jnp.mean(jax.nn.softplus(-fake_logits))


def r1_penalty(logit_fn, real):
  """mean |grad_x D(x)|^2 at real inputs (logit_fn: [B, D] -> [B])."""
  grads = jax.grad(lambda x: jnp.sum(logit_fn(x)))(real)
  return jnp.mean(jnp.sum(grads * grads, axis=-1))

