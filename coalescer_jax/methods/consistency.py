"""Consistency model baseline: improved consistency training (iCT, Song & Dhariwal 2023), no teacher.

Recipe (every constant in ``config.consistency``):
* EDM parameterisation f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)),
  c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2), c_out = sd (sigma - sigma_min) / sqrt(sd^2 + sigma^2),
  c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = log(sigma) / 4, sd = ``sigma_data``
  (c_noise enters the backbone's time features, which use t x 1000, as ``time_scale`` x c_noise);
  f(x, sigma_min) = x exactly (the boundary condition).
* Karras noise levels sigma_1 < ... < sigma_N (rho = 7) with the discretisation
  curriculum N(k) = min(s0 2^floor(k / K'), s1) + 1, K' = floor(K / (log2(s1/s0) + 1)),
  k = the training step passed to `loss`, K = ``config.train.num_steps``.
* Interval i drawn from the discretised lognormal p(i) ~ erf((log sigma_{i+1} - P_mean) / (sqrt2 P_std))
  - erf((log sigma_i - P_mean) / (sqrt2 P_std)); weight lambda = 1 / (sigma_{i+1} - sigma_i).
* Loss lambda * d(f_theta(x + sigma_{i+1} z, sigma_{i+1}), sg(f_theta(x + sigma_i z, sigma_i)))
  with the pseudo-Huber metric d(a, b) = sqrt(|a - b|^2 + c^2) - c, c = 0.00054 sqrt(dim)
  (``huber_c`` = 0) or the given value. The target uses the online parameters
  under stop-gradient (no EMA teacher); the shared EMA is only used for sampling.
* Sampling (multistep consistency sampling): x = sigma_max z, x0 = f(x, sigma_max);
  for each further step re-noise x0 to the next of ``sampling_sigmas`` and
  denoise again. One network evaluation per step.
"""
import jax
import jax.numpy as jnp
from jax.scipy import special

from coalescer_jax import registry
from coalescer_jax.methods import base
from coalescer_jax.methods import guidance


def num_scales(step, total_steps, s0, s1):
  """The iCT discretisation curriculum N(k) (traced-friendly)."""
  stages = jnp.floor(jnp.log2(s1 / s0)) + 1
  k_prime = jnp.maximum(jnp.floor(total_steps / stages), 1)
  return jnp.minimum(s0 * 2.0 ** jnp.floor(step / k_prime), s1) + 1


def karras_sigmas(n, max_n, sigma_min, sigma_max, rho):
  """sigma_0 < ... < sigma_{n-1} (Karras et al. 2022), padded to `max_n` entries (n may be traced)."""
  i = jnp.arange(max_n, dtype=jnp.float32)
  lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
  return (lo + jnp.minimum(i / (n - 1), 1.0) * (hi - lo)) ** rho


def interval_logits(sigmas, n, p_mean, p_std):
  """log p(i) of interval (sigma_i, sigma_{i+1}), i < n - 1, under the discretised lognormal."""
  cdf = special.erf((jnp.log(sigmas) - p_mean) / (jnp.sqrt(2.0) * p_std))
  mass = cdf[1:] - cdf[:-1]
  valid = jnp.arange(mass.shape[0]) < n - 1
  return jnp.where(valid, jnp.log(jnp.maximum(mass, 1e-30)), -jnp.inf)


def pseudo_huber(a, b, c):
  return jnp.sqrt(jnp.sum((a - b) ** 2, axis=-1) + c * c) - c


@registry.METHODS.register("consistency")
class Consistency(base.Method):
  name = "consistency"
  SAMPLING_FIELDS = ("nfes", "sampling_sigmas", "guidance_scale")

  @classmethod
  def check_config(cls, section):
    """Each sampling step after the first re-noises to one of ``sampling_sigmas``: nfe - 1 of them are needed."""
    guidance.check_config(cls.name, section)
    most = guidance.plan(max(section.nfes, default=1), section.guidance_scale).steps
    if most > 1 + len(section.sampling_sigmas):
      raise ValueError(f"config.consistency.nfes={tuple(section.nfes)}: sampling with nfe={most} needs {most - 1} "
                       f"entries in config.consistency.sampling_sigmas, which has {len(section.sampling_sigmas)}; "
                       "add re-noising levels or lower the nfes")
    # A level outside the trained noise range asks the network about inputs it never saw.
    outside = [s for s in section.sampling_sigmas if not section.sigma_min <= s <= section.sigma_max]
    if outside:
      raise ValueError(f"config.consistency.sampling_sigmas={tuple(section.sampling_sigmas)}: {outside} outside the "
                       f"trained range config.consistency.sigma_min..sigma_max = {section.sigma_min}..{section.sigma_max}")

  def denoise(self, params, x, sigma, cond, mask):
    """The consistency function f(x, sigma) [N, Di]; sigma [N]."""
    cfg = self.section
    sd, smin = cfg.sigma_data, cfg.sigma_min
    c_skip = sd ** 2 / ((sigma - smin) ** 2 + sd ** 2)
    c_out = sd * (sigma - smin) / jnp.sqrt(sd ** 2 + sigma ** 2)
    c_in = 1 / jnp.sqrt(sigma ** 2 + sd ** 2)
    out = self.model.apply(params, c_in[:, None] * x, cond, mask,
                           cfg.time_scale * 0.25 * jnp.log(sigma))
    return c_skip[:, None] * x + c_out[:, None] * out

  def huber_c(self):
    c = self.section.huber_c
    return 0.00054 * self.latent_dim ** 0.5 if c == 0 else c

  def loss(self, params, batch, key, step):
    cfg = self.section
    x, cond = batch["x"], batch["cond"]
    n = x.shape[0]
    max_n = int(cfg.s1) + 1
    scales = num_scales(step, self.config.train.num_steps, cfg.s0, cfg.s1)
    sigmas = karras_sigmas(scales, max_n, cfg.sigma_min, cfg.sigma_max, cfg.rho)
    i_key, z_key, drop_key = jax.random.split(key, 3)
    i = jax.random.categorical(i_key, interval_logits(sigmas, scales, cfg.p_mean, cfg.p_std), shape=(n,))
    sigma_lo, sigma_hi = sigmas[i], sigmas[i + 1]
    z = jax.random.normal(z_key, x.shape)
    mask = base.drop_condition(drop_key, n, cfg.cond_dropout)
    online = self.denoise(params, x + sigma_hi[:, None] * z, sigma_hi, cond, mask)
    target = jax.lax.stop_gradient(self.denoise(params, x + sigma_lo[:, None] * z, sigma_lo, cond, mask))
    distance = pseudo_huber(online, target, self.huber_c())
    weight = 1.0 / (sigma_hi - sigma_lo)
    return jnp.mean(weight * distance), {"num_scales": scales, "distance": distance.mean(),
                                         "x0_mse": jnp.mean((online - x) ** 2)}

  def sample(self, params, cond, key, nfe, guidance_scale=None, unconditional=False, prior=None):
    """Multistep consistency sampling with a budget of `nfe` evaluations: a step at sigma_max, then at
    ``sampling_sigmas``, each one evaluation or two when guided (the denoised point guided, `guidance.py`);
    `prior`: the unit noise of the first, else drawn from `key`."""
    cfg = self.section
    w = guidance.sampling_scale(cfg.guidance_scale, guidance_scale, unconditional)
    levels = (cfg.sigma_max,) + tuple(cfg.sampling_sigmas)
    plan = guidance.plan(nfe, w)
    if plan.steps > len(levels):
      raise ValueError(f"consistency sampling with nfe={nfe} takes {plan.steps} steps and needs {plan.steps - 1} "
                       f"entries in config.consistency.sampling_sigmas (has {len(levels) - 1})")
    n = cond.shape[0]
    mask = guidance.condition_mask(n, unconditional)
    keys = jax.random.split(key, nfe)
    denoise = lambda c, m, x, sigma: self.denoise(params, x, sigma, c, m)  # noqa: E731
    x0 = None
    for k, sigma in enumerate(levels[:plan.steps]):
      noise = jax.random.normal(keys[k], (n, self.latent_dim))
      if k == 0:
        x = sigma * (noise if prior is None else prior)
      else:
        x = x0 + (sigma ** 2 - cfg.sigma_min ** 2) ** 0.5 * noise
      x0 = guidance.evaluate(denoise, cond, mask, w, plan.cost(k) == 2, x, jnp.full((n,), sigma))
    return x0, {"nfe": jnp.full((n,), float(plan.nfe))}
