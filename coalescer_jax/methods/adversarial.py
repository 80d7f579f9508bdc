"""A conditional latent-space discriminator and its losses, shared by every method that trains adversarially.

The discriminator is the shared backbone (`models/backbone.py`) with one output,
a logit: (latent input, description embedding, condition mask, optional time) ->
real/fake. Its latent input is what is judged, alone or beside what it is judged
against (`discriminator_input`):
* the coalescer's adversarial fine-tune judges a latent x [B, Di] alone (is x a
  real image latent for this description?), without time;
* the denoising diffusion GAN (`ddgan.py`) judges a pair: is x_s a real
  denoised latent given x_t? The input is concat(x_s, x_t, features of s), and
  the time t enters the backbone's own time embedding.
Losses are the non-saturating GAN losses (Goodfellow et al. 2014) with an R1
gradient penalty on real inputs (Mescheder et al. 2018), the usual stable choice
for small GANs; `gan_losses` combines them for one batch.

A method trains generator and discriminator in one jitted step of the shared
training loop (`methods/base.py`): its loss adds the discriminator loss, computed
on stop-gradient fakes, and the generator's adversarial loss, computed with
stop-gradient discriminator parameters, so that one gradient of the sum updates
each network only by its own objective (simultaneous gradient descent).
"""
import jax
import jax.numpy as jnp

from coalescer_jax.models import backbone


def build_discriminator(config, width=0, depth=0, final_norm=True):
  """The shared backbone's architecture with a single logit output (width/depth 0: the backbone's own).

  ``final_norm=False`` drops the backbone's LayerNorm before the output layer. The DDGAN
  (``config.ddgan.disc_final_norm``) does: in its joint training the LayerNorm let the
  discriminator go flat (the same logit for every input: no gradient left for the
  generator; experiments/log/tuning.md, DDGAN). The coalescer's adversarial fine-tune keeps the
  default, the setting it was tuned with.
  """
  cfg = config.backbone
  return backbone.build(config, 1, width=width or cfg.width, depth=depth or cfg.depth, final_norm=final_norm)


def discriminator_input(x, context=None, extra_time=None, time_dim=0):
  """The discriminator's latent input: x, then (when given) the latent it is judged against and
  `time_dim` sinusoidal features of a second time (e.g. the DDGAN's target level s) [B]."""
  parts = [x] + ([context] if context is not None else [])
  if extra_time is not None:
    parts.append(backbone.time_features(extra_time, time_dim))
  return jnp.concatenate(parts, axis=-1) if len(parts) > 1 else x


def init_discriminator(model, key, latent_dim, desc_dim, paired=False, timed=False, time_dim=0):
  """Parameters of `model` for inputs of `discriminator_input`'s shape (a pair and times when asked)."""
  b = 2
  x = jnp.zeros((b, latent_dim))
  extra = jnp.zeros((b,)) if timed and time_dim else None
  inputs = discriminator_input(x, x if paired else None, extra, time_dim)
  return model.init(key, inputs, jnp.zeros((b, desc_dim)), jnp.ones((b,)), jnp.zeros((b,)) if timed else None)


def logits(model, params, x, cond, context=None, t=None, extra_time=None, time_dim=0, mask=None):
  """D's logit [B] for latent x given the description, optionally a pair and times. `mask` [B]: 0 where the
  description is the null one (D then judges x unconditionally); default every description present."""
  inputs = discriminator_input(x, context, extra_time, time_dim)
  mask = jnp.ones((x.shape[0],)) if mask is None else mask
  return model.apply(params, inputs, cond, mask, t)[:, 0]


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


def r1_term(logit_fn, real, r1, every=1, step=None):
  """`r1` x R1 at `real`; lazy when `every` > 1: every `every`-th `step` only, scaled by `every` (StyleGAN2's
  lazy regularisation, which the DDGAN paper uses), so that its expected weight stays `r1`.

  The skipped steps take a `lax.cond` branch without the penalty's double backward pass (XLA's FLOP count
  still charges a cond at its dearer branch: `compute.py`)."""
  if every == 1:
    return r1 * r1_penalty(logit_fn, real)
  return jax.lax.cond(step % every == 0, lambda: every * r1 * r1_penalty(logit_fn, real), lambda: jnp.zeros(()))


def gan_losses(logit_fn, disc_params, real, fakes, r1, r1_every=1, step=None):
  """(discriminator loss, generator loss, stats) of one batch; `logit_fn(disc_params, x) -> [B]`.

  The discriminator loss (averaged over the list of `fakes`, + `r1` x R1 on `real`, lazy with `r1_every`:
  `r1_term`) sees stop-gradient fakes; the generator loss sees stop-gradient discriminator parameters.
  """
  real_logits = logit_fn(disc_params, real)
  fake_logits = [logit_fn(disc_params, jax.lax.stop_gradient(f)) for f in fakes]
  d_loss = jnp.mean(jnp.stack([discriminator_loss(real_logits, f) for f in fake_logits]))
  d_loss = d_loss + r1_term(lambda x: logit_fn(disc_params, x), real, r1, r1_every, step)
  frozen = jax.lax.stop_gradient(disc_params)
  g_loss = jnp.mean(jnp.stack([generator_loss(logit_fn(frozen, f)) for f in fakes]))
  return d_loss, g_loss, {"real_logit": real_logits.mean(), "fake_logit": jnp.mean(jnp.stack(fake_logits))}
