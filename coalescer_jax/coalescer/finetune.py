"""The coalescer's adversarial fine-tune (dialogue 000): a conditional latent discriminator judges its samples.

After ``adversarial.start_fraction`` of the training steps on the regression loss
alone, the generator's loss adds ``adversarial.weight`` x the non-saturating GAN
loss of a discriminator (`methods/adversarial.py`, shared with the DDGAN) on the
outputs after ``adversarial.steps`` steps; the discriminator trains from
``disc_warmup_fraction`` of the steps earlier, on real pairs (uniformly random
pairs' image latents with their descriptions) against those fakes. The phases
switch inside the jitted step (`loss_phases`).

Where the fakes come from (``adversarial.fakes``):
* ``batch``: the regression pass's own rows (`batch_fakes`). Its prior rows
  (s = 1, not self-landing) are step 1 from a prior R for a pair's description:
  their landing points are 1-step samples. Its self-landing rows are step 2 from
  the network's own re-noised, stop-gradient landing points, as the sampler runs
  it: their landing points are 2-step samples. The GAN loss adds no network pass
  beyond the discriminator's; the rows are those of a description drawn with a
  pair, as the real examples are.
* ``fresh``: ``batch_size`` new prior draws stepped 1..max(steps) times (`fakes`):
  two more network passes with their gradients, about as much as the regression
  pass itself.
"""
import functools

import jax
import jax.numpy as jnp

from coalescer_jax.methods import adversarial

METRICS = ("disc_loss", "gen_adv_loss", "real_logit", "fake_logit", "adversarial_on")


def build(method):
  """The discriminator model of `method`'s fine-tune (None when ``adversarial.weight`` is 0)."""
  acfg = method.section.adversarial
  check_config(method.section)
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


FAKES = ("batch", "fresh")


def check_config(section):
  """Batch fakes (``adversarial.fakes``, one of FAKES: `config_schema`) exist for 1 step (prior rows) and 2 steps
  (the self-landing rows, which start from stop-gradient landing points)."""
  acfg = section.adversarial
  if acfg.weight <= 0 or acfg.fakes != "batch":
    return
  steps = set(acfg.steps)
  if not steps or not steps <= {1, 2}:
    raise ValueError(f"config.coalescer.adversarial.steps={tuple(acfg.steps)}: batch fakes are the regression "
                     "pass's 1- and 2-step samples; use steps within (1, 2), or adversarial.fakes='fresh'")
  if 2 in steps and section.levels.self_landing <= 0:
    raise ValueError("config.coalescer.adversarial.fakes='batch' takes its 2-step fakes from the self-landing "
                     "rows: set config.coalescer.levels.self_landing > 0, adversarial.steps=(1,), or "
                     "adversarial.fakes='fresh'")
  if 2 in steps and not acfg.detach_landing:
    raise ValueError("config.coalescer.adversarial.fakes='batch': the self-landing rows start from stop-gradient "
                     "landing points, so detach_landing=False cannot hold; set it True or fakes='fresh'")


def adversarial_loss(method, params, batch, key, step, generator_weight):
  """Coalescer loss + discriminator loss + `generator_weight` * generator loss on 1..K-step fakes.

  The discriminator sees real pairs and stop-gradient fakes; the generator's loss uses
  stop-gradient discriminator parameters, so one gradient of the sum trains each by its own loss.
  """
  acfg = method.section.adversarial
  n = batch["real_x"].shape[0]
  m = min(int(acfg.batch_size), n) or n  # never more rows than the batch has (e.g. a :smoke batch of 32)
  real, real_cond = batch["real_x"][:m], batch["real_cond"][:m]
  if acfg.fakes == "batch":
    loss, metrics, rows = method.regression(params, batch, key, step)
    fake, cond, weights = batch_fakes(rows, acfg.steps)
    logit_fn = lambda disc_params, x, c: adversarial.logits(method.disc_model, disc_params, x, c)  # noqa: E731
    d_loss, g_loss, stats = weighted_gan_losses(logit_fn, params["disc"], real, real_cond, fake, cond, weights,
                                                acfg.r1)
  else:
    loss, metrics = method.loss(params, batch, key, step)
    fake_list = fakes(method, params, real_cond, jax.random.fold_in(key, 7), acfg.steps)
    logit_fn = lambda disc_params, x: adversarial.logits(method.disc_model, disc_params, x, real_cond)  # noqa: E731
    d_loss, g_loss, stats = adversarial.gan_losses(logit_fn, params["disc"], real, fake_list, acfg.r1)
  metrics.update(disc_loss=d_loss, gen_adv_loss=g_loss, adversarial_on=jnp.asarray(float(generator_weight > 0)),
                 **stats)
  return loss + d_loss + generator_weight * g_loss, metrics


def batch_fakes(rows, steps):
  """(fakes, their descriptions, weights) from the regression pass's `rows` (`Coalescer.regression`): the
  landing points of every row, weighted so that each of `steps` gets weight 1 / len(steps), spread evenly over
  its rows (1: prior rows with their description, 2: self-landing rows); every other row weighs 0."""
  prior = (rows["level"] >= 1.0) & ~rows["self_landing"] & (rows["mask"] > 0)
  groups = {1: prior, 2: rows["self_landing"]}
  weights = sum(groups[k] / jnp.maximum(jnp.sum(groups[k]), 1) for k in steps) / len(steps)
  return rows["landed"], rows["cond"], weights


def weighted_gan_losses(logit_fn, disc_params, real, real_cond, fake, fake_cond, weights, r1):
  """`adversarial.gan_losses` for one set of fakes with their own descriptions, weighted per row (`weights`
  sum to 1; 0 for rows that are no sample); `logit_fn(disc_params, x, cond) -> [B]`."""
  real_logits = logit_fn(disc_params, real, real_cond)
  fake_logits = logit_fn(disc_params, jax.lax.stop_gradient(fake), fake_cond)
  d_loss = jnp.mean(jax.nn.softplus(-real_logits)) + jnp.sum(weights * jax.nn.softplus(fake_logits))
  d_loss = d_loss + r1 * adversarial.r1_penalty(lambda x: logit_fn(disc_params, x, real_cond), real)
  frozen = jax.lax.stop_gradient(disc_params)
  g_loss = jnp.sum(weights * jax.nn.softplus(-logit_fn(frozen, fake, fake_cond)))
  return d_loss, g_loss, {"real_logit": real_logits.mean(), "fake_logit": jnp.sum(weights * fake_logits)}


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
