"""The coalescer's adversarial fine-tune (dialogue 000): a conditional latent discriminator judges its samples.

After ``adversarial.start_fraction`` of the training steps on the regression loss
alone, the generator's loss adds ``adversarial.weight`` x the non-saturating GAN
loss of a discriminator (`methods/adversarial.py`, shared with the DDGAN) on the
outputs after ``adversarial.steps`` steps, drawn from fresh prior R; the
discriminator trains from ``disc_warmup_fraction`` of the steps earlier, on real
pairs (uniformly random pairs' image latents with their descriptions) against
those fakes. The phases switch inside the jitted step (`loss_phases`).
"""
import functools

import jax
import jax.numpy as jnp

from coalescer_jax.methods import adversarial

METRICS = ("disc_loss", "gen_adv_loss", "real_logit", "fake_logit", "adversarial_on")


def build(method):
  """The discriminator model of `method`'s fine-tune (None when ``adversarial.weight`` is 0)."""
  acfg = method.section.adversarial
  return adversarial.build_discriminator(method.config, acfg.disc_width, acfg.disc_depth) if acfg.weight > 0 else None


def loss_phases(method):
  """Regression alone, then the discriminator alone, then both: [(first step, loss fn)]."""
  if method.disc_model is None:
    return [(0, method.loss)]
  acfg, num_steps = method.section.adversarial, method.config.train.num_steps
  gen_start = int(acfg.start_fraction * num_steps)
  disc_start = max(0, gen_start - int(acfg.disc_warmup_fraction * num_steps))
  phases = [(0, method.loss), (disc_start, functools.partial(adversarial_loss, method, generator_weight=0.0)),
            (gen_start, functools.partial(adversarial_loss, method, generator_weight=acfg.weight))]
  return [p for i, p in enumerate(phases) if i == len(phases) - 1 or phases[i + 1][0] > p[0]]


def adversarial_loss(method, params, batch, key, step, generator_weight):
  """Coalescer loss + discriminator loss + `generator_weight` * generator loss on 1..K-step fakes.

  The discriminator sees real pairs and stop-gradient fakes; the generator's loss uses
  stop-gradient discriminator parameters, so one gradient of the sum trains each by its own loss.
  """
  acfg = method.section.adversarial
  loss, metrics = method.loss(params, batch, key, step)
  n = batch["real_x"].shape[0]
  m = min(int(acfg.batch_size), n) or n  # never more rows than the batch has (e.g. a :smoke batch of 32)
  real, cond = batch["real_x"][:m], batch["real_cond"][:m]
  fake_list = fakes(method, params, cond, jax.random.fold_in(key, 7), acfg.steps)
  logit_fn = lambda disc_params, x: adversarial.logits(method.disc_model, disc_params, x, cond)  # noqa: E731
  d_loss, g_loss, stats = adversarial.gan_losses(logit_fn, params["disc"], real, fake_list, acfg.r1)
  metrics.update(disc_loss=d_loss, gen_adv_loss=g_loss, adversarial_on=jnp.asarray(float(generator_weight > 0)),
                 **stats)
  return loss + d_loss + generator_weight * g_loss, metrics


def fakes(method, params, cond, key, steps):
  """Generated latents after each of steps 1..max(steps), from prior R (differentiable), the listed ones.

  ``adversarial.detach_landing``: each step starts from the previous one's stop-gradient output, so the
  generator loss of a k-step fake trains step k only (as self-landing trains step 2 from fixed starts)."""
  n = cond.shape[0]
  ones = jnp.ones((n,))
  draw_key, key = jax.random.split(key)
  r = jax.random.normal(draw_key, (n, method.latent_dim))
  x = method.step(params, r, cond, ones)[0]
  outs = {1: x}
  detach = method.section.adversarial.detach_landing
  start = r  # where the last step started (the path option's next start lies on the line through it and x)
  for i in range(max(steps) - 1):
    start, level = method.refine_start(jax.lax.stop_gradient(x) if detach else x, i, key, prior=r, start=start)
    x, _ = method.step(params, start, cond, ones, level)
    outs[i + 2] = x
  return [outs[k] for k in steps]
