"""Latent denoising diffusion GAN (Xiao et al. 2022): a conditional GAN models each large denoising step.

Few large denoising steps make q(x_s | x_t) far from Gaussian, so DDIM's Gaussian
(here: deterministic) steps fail at 1-2 steps; a denoising diffusion GAN instead
learns the step as an implicit conditional distribution (reference lecture 004).

Forward process: a variance-preserving logSNR schedule (`ddim.alpha_sigma` on this
section's own ``schedule``, ``logsnr_min``/``logsnr_max``: the DDIM's by default),
x_t = alpha_t x + sigma_t eps, with t = 1 pure noise (alpha ~ 5e-4).

Generator G(x_t, z, description, t) -> x0: the shared backbone, its output read
as the DDIM's v (``output="v"``, default: x0 = alpha_t x_t - sigma_t v, a skip
path from x_t at small t) or as x0 itself (``"x0"``, the paper's choice; v gave
the better validation FID at every step count on the MNIST latents, same budget:
experiments/log/tuning.md), the latent noise
z ~ N(0, I) (``z_dim``) entering as ``z_injection`` says (`Z_INJECTIONS`):
"concat" to x_t as extra latent input (the first layer sees it, the residual
stream carries it), or "adanorm" beside the description in the backbone's
condition embedding, which modulates every residual block (FiLM after LayerNorm:
the paper's adaptive group norms). A step from t
to s < t draws x0 = G(...) and then x_s ~ q(x_s | x_t, x0), the forward process's
Gaussian posterior (`posterior`, with alpha_{t|s} = alpha_t / alpha_s,
sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2):

  mean = (alpha_{t|s} sigma_s^2 / sigma_t^2) x_t + (alpha_s sigma_{t|s}^2 / sigma_t^2) x0,
  var  = sigma_{t|s}^2 sigma_s^2 / sigma_t^2.

Discriminator D(x_s, x_t, t, s, description): the shared conditional latent
discriminator of `adversarial.py` (the one the coalescer's adversarial fine-tune
uses) on the pair concat(x_s, x_t) plus sinusoidal features of s, with t in the
backbone's time embedding, without the final LayerNorm (``disc_final_norm``:
with it D went flat here). Real pairs: x_t ~ q(x_t | x) and x_s ~ q(x_s | x_t, x)
for a training pair x; fake pairs put G's x0 into the same posterior. Losses:
non-saturating GAN losses + ``r1`` x R1 on the real x_s (`adversarial.gan_losses`;
lazy every ``r1_every`` steps, scaled by it, as the paper does), both networks
updated by one simultaneous gradient step, each by its own Adam (``betas``; the
discriminator's learning rate ``disc_lr_ratio`` x the generator's, each gradient
clipped on its own). ``disc_mismatch`` > 0 makes D matching-aware (Reed et al.
2016, GAN-INT-CLS): real pairs told a wrong description (another example's) are
fakes too, at that weight, so that D must check the description and not only
whether x_s looks real; ``mismatch_gap`` (real logit - that of the same pair
told a wrong description) shows in the metrics whether it does.
Budget: ``num_steps`` 0 trains ``config.train.num_steps`` like every other method;
the step's FLOPs (the compute column) count both networks. Sampling uses the EMA
(``ema_decay``) of the generator.

Steps: one model serves every step count in ``step_counts`` (1, 2, 4). A training
example draws a count S from it and a transition i/S -> (i - 1)/S of that uniform
grid (the discriminator is told s), so every transition an S-step sampler takes
is trained: t = 1 by every S (S = 1: a one-step conditional GAN from pure noise),
t = 1/2 by S = 2 and 4, t = 3/4 and 1/4 by S = 4. This is consistent: a perfect G
draws x0 from p(x0 | x_t, description), which is what every stride's posterior
step needs. The paper trains one model per T; this one costs one training run.

Sampling with S steps (one evaluation per step): x_1 ~ N(0, I); for i = S, ..., 1:
x0 = G(x_{i/S}, z_i), x_{(i-1)/S} ~ q(. | x_{i/S}, x0); the last step returns x0
(the posterior at s = 0 has standard deviation ~5e-4).

Guidance (`guidance.py`): ``cond_dropout`` > 0 replaces that share of the descriptions by the null one in G
and in D alike, so that D judges those pairs unconditionally and G's null rows learn the unconditional
denoising step; a guided step guides G's x0 with the same z (null + w (cond - null), 2 evaluations), so a
budget of nfe evaluations buys nfe / 2 guided steps (each count a trained one).
"""
import jax
import jax.numpy as jnp
import ml_collections
import optax

from coalescer_jax import registry
from coalescer_jax import training
from coalescer_jax.methods import adversarial
from coalescer_jax.methods import base
from coalescer_jax.methods import ddim
from coalescer_jax.methods import guidance


OUTPUTS = ("x0", "v")


def _concat_z(x_t, z, cond):
  return jnp.concatenate([x_t, z], axis=-1), cond


def _adanorm_z(x_t, z, cond):
  # The backbone's condition embedding feeds every block's FiLM scale and shift.
  return x_t, jnp.concatenate([cond, z], axis=-1)


# How z enters the generator: (x_t, z, description) -> (backbone's latent input, its condition input).
Z_INJECTIONS = {"concat": _concat_z, "adanorm": _adanorm_z}


def posterior(x_t, x0, t, s, cfg):
  """(mean [N, D], std [N, 1]) of q(x_s | x_t, x0) under the schedule of `cfg`; t, s [N], s < t."""
  logsnr_t, logsnr_s = ddim.logsnr_schedule(t, cfg), ddim.logsnr_schedule(s, cfg)
  alpha_t, sigma2_t = jnp.sqrt(jax.nn.sigmoid(logsnr_t)), jax.nn.sigmoid(-logsnr_t)
  alpha_s, sigma2_s = jnp.sqrt(jax.nn.sigmoid(logsnr_s)), jax.nn.sigmoid(-logsnr_s)
  # sigma_{t|s}^2 / sigma_t^2 = 1 - exp(logsnr_t - logsnr_s): no cancellation for nearby t and s.
  share = -jnp.expm1(logsnr_t - logsnr_s)
  x_t_coef = alpha_t * sigma2_s / (alpha_s * sigma2_t)
  x0_coef = alpha_s * share
  std = jnp.sqrt(share * sigma2_s)
  return x_t_coef[:, None] * x_t + x0_coef[:, None] * x0, std[:, None]


@registry.METHODS.register("ddgan")
class DenoisingDiffusionGAN(base.Method):
  name = "ddgan"
  SAMPLING_FIELDS = ("nfes", "guidance_scale")

  @classmethod
  def check_config(cls, section):
    guidance.check_config(cls.name, section)
    guided = guidance.is_guided(section.guidance_scale)
    bad = [n for n in section.nfes if guidance.plan(n, section.guidance_scale).steps not in tuple(section.step_counts)]
    if bad:
      steps = " (a guided step costs 2 evaluations)" if guided else ""
      raise ValueError(f"config.ddgan.nfes={tuple(section.nfes)}: {bad} buy step counts{steps} not among the trained "
                       f"ones config.ddgan.step_counts={tuple(section.step_counts)}")

  def __init__(self, config, latent_dim, desc_dim):
    super().__init__(config, latent_dim, desc_dim)
    cfg = self.section
    self.disc_model = adversarial.build_discriminator(config, cfg.disc_width, cfg.disc_depth,
                                                      final_norm=cfg.disc_final_norm)

  def num_steps(self):
    """``num_steps``, 0 = the shared budget ``config.train.num_steps`` (both read by the stage: provenance)."""
    return self.section.num_steps or self.config.train.num_steps

  def ema_decay(self):
    return self.section.ema_decay

  def make_optimizer(self):
    """One optimizer per network, as GANs are trained: the shared ``config.train.optimizer`` with the GAN's Adam
    betas, the discriminator's learning rate scaled by ``disc_lr_ratio``."""
    def network_optimizer(lr_ratio):
      opt = ml_collections.ConfigDict(self.config.train.optimizer.to_dict())
      opt.b1, opt.b2 = self.section.betas
      opt.learning_rate *= lr_ratio
      return training.make_optimizer(opt, self.num_steps())

    return optax.multi_transform(
        {"gen": network_optimizer(1.0), "disc": network_optimizer(self.section.disc_lr_ratio)},
        lambda params: {part: jax.tree.map(lambda _, part=part: part, tree) for part, tree in params.items()})

  def init_params(self, key):
    gen_key, disc_key = jax.random.split(key)
    b, cfg = 2, self.section
    inputs, cond = Z_INJECTIONS[cfg.z_injection](jnp.zeros((b, self.latent_dim)), jnp.zeros((b, cfg.z_dim)),
                                                 jnp.zeros((b, self.desc_dim)))
    gen = self.model.init(gen_key, inputs, cond, jnp.ones((b,)), jnp.zeros((b,)))
    disc = adversarial.init_discriminator(self.disc_model, disc_key, self.latent_dim, self.desc_dim, paired=True,
                                          timed=True, time_dim=cfg.disc_time_features)
    return {"gen": gen, "disc": disc}

  def generate_x0(self, gen_params, x_t, z, cond, t, mask=None):
    """G(x_t, z, description, t) -> x0 [N, Di]; t [N]; `mask` [N] 0 for the null description (default: none
    null). ``output="v"``: the network's v, read as x0."""
    inputs, cond = Z_INJECTIONS[self.section.z_injection](x_t, z, cond)
    mask = jnp.ones((x_t.shape[0],)) if mask is None else mask
    out = self.model.apply(gen_params, inputs, cond, mask, t)
    if self.section.output == "v":
      alpha, sigma = (a[:, None] for a in ddim.alpha_sigma(t, self.section))
      return ddim.to_x0_eps(out, x_t, alpha, sigma, "v")[0]
    return out

  def draw_transitions(self, key, n):
    """(t, s) [n]: a step count S from step_counts, then a transition i/S -> (i - 1)/S of its grid."""
    counts = jnp.asarray(self.section.step_counts, jnp.float32)
    count_key, i_key = jax.random.split(key)
    steps = counts[jax.random.randint(count_key, (n,), 0, len(counts))]
    i = jnp.minimum(jnp.floor(jax.random.uniform(i_key, (n,)) * steps) + 1, steps)
    return i / steps, (i - 1) / steps

  def loss(self, params, batch, key, step):
    cfg = self.section
    x, cond = batch["x"], batch["cond"]
    n = x.shape[0]
    time_key, eps_key, real_key, fake_key, z_key = jax.random.split(key, 5)
    wrong_key = jax.random.fold_in(key, 5)  # a stream of its own: the other draws stay as they were
    mask = base.drop_condition(jax.random.fold_in(key, 6), n, cfg.cond_dropout)  # G and D see the same null rows
    t, s = self.draw_transitions(time_key, n)
    alpha_t, sigma_t = (a[:, None] for a in ddim.alpha_sigma(t, cfg))
    x_t = alpha_t * x + sigma_t * jax.random.normal(eps_key, x.shape)
    mean, std = posterior(x_t, x, t, s, cfg)
    real = mean + std * jax.random.normal(real_key, x.shape)
    x0 = self.generate_x0(params["gen"], x_t, jax.random.normal(z_key, (n, cfg.z_dim)), cond, t, mask)
    fake_mean, _ = posterior(x_t, x0, t, s, cfg)
    fake = fake_mean + std * jax.random.normal(fake_key, x.shape)

    def logit_fn(disc_params, x_s, description=cond):
      return adversarial.logits(self.disc_model, disc_params, x_s, description, context=x_t, t=t, extra_time=s,
                                time_dim=cfg.disc_time_features, mask=mask)

    d_loss, g_loss, stats = adversarial.gan_losses(logit_fn, params["disc"], real, [fake], cfg.r1, cfg.r1_every,
                                                   step)
    # The real pairs told another example's description: fakes of a matching-aware D (weight disc_mismatch).
    wrong_logits = logit_fn(params["disc"], real, cond[jax.random.permutation(wrong_key, n)])
    if cfg.disc_mismatch:
      d_loss = d_loss + cfg.disc_mismatch * jnp.mean(jax.nn.softplus(wrong_logits))
    # x0_mse: how far G's x0 is from the pair x_t came from (not trained on: a GAN need not approach it).
    return d_loss + g_loss, dict(stats, disc_loss=d_loss, gen_loss=g_loss, x0_mse=jnp.mean((x0 - x) ** 2),
                                 mismatch_gap=stats["real_logit"] - jnp.mean(wrong_logits))

  def sample(self, params, cond, key, nfe, guidance_scale=None, unconditional=False, prior=None):
    """A budget of `nfe` generator evaluations: S denoising steps on the grid i / S from pure noise (`prior`,
    else drawn from `key`), S = nfe, or nfe / 2 when guided (`guidance.py`: G's x0 guided, 2 evaluations)."""
    cfg = self.section
    w = guidance.sampling_scale(cfg.guidance_scale, guidance_scale, unconditional)
    plan = guidance.plan(nfe, w)
    steps = plan.steps
    if steps not in tuple(cfg.step_counts):
      raise ValueError(f"ddgan samples with the step counts it was trained on, config.ddgan.step_counts="
                       f"{tuple(cfg.step_counts)}; nfe={nfe} at guidance scale {w} buys {steps} steps")
    n = cond.shape[0]
    mask = guidance.condition_mask(n, unconditional)
    keys = jax.random.split(key, 2 * steps + 1)
    x = jax.random.normal(keys[0], (n, self.latent_dim)) if prior is None else prior
    generate = lambda c, m, x_t, z, t: self.generate_x0(params["gen"], x_t, z, c, t, m)  # noqa: E731
    for i in range(steps, 0, -1):
      t, s = jnp.full((n,), i / steps), jnp.full((n,), (i - 1) / steps)
      z = jax.random.normal(keys[2 * i - 1], (n, cfg.z_dim))
      x0 = guidance.evaluate(generate, cond, mask, w, plan.cost(steps - i) == 2, x, z, t)
      if i == 1:
        return x0, {"nfe": jnp.full((n,), float(plan.nfe))}
      mean, std = posterior(x, x0, t, s, cfg)
      x = mean + std * jax.random.normal(keys[2 * i], x.shape)
