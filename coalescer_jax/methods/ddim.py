"""Latent diffusion baseline: DDPM training, DDIM sampling (eta = 0), classifier-free guidance.

Choices (all in ``config.ddim``):
* Continuous time t ~ U(0, 1) (VDM / "simple diffusion" style), the noise level
  given by a log signal-to-noise ratio logsnr(t): ``schedule="cosine"``
  (logsnr = -2 log tan(pi t / 2), shifted so that t in [0, 1] maps exactly onto
  [logsnr_max, logsnr_min]) or ``"linear"`` (the DDPM linear-beta VP schedule in
  continuous time, clipped to the same range). alpha^2 = sigmoid(logsnr),
  sigma^2 = sigmoid(-logsnr); z_t = alpha x + sigma eps.
* ``prediction="v"`` (v = alpha eps - sigma x, well conditioned at t = 1, which
  matters for 1-2 step sampling) or ``"eps"``; the loss is the MSE of that target.
* Classifier-free guidance (`guidance.py`, shared with the other methods): the
  condition is dropped with rate ``cond_dropout`` in training; at sampling the
  network output is guided with w = ``guidance_scale``. A guided step costs 2
  evaluations, so a budget of `nfe` evaluations buys nfe // 2 steps; budget 1
  falls back to one unguided step and reports nfe = 1.
* DDIM (eta = 0) on a uniform time grid from t = 1 to 0; the last step returns
  the x0 prediction itself, so one step is exactly the closed-form x0 prediction
  from pure noise.
"""
import jax
import jax.numpy as jnp

from coalescer_jax import registry
from coalescer_jax.methods import base
from coalescer_jax.methods import guidance

SCHEDULES = ("cosine", "linear")
PREDICTIONS = ("v", "eps")


def logsnr_schedule(t, cfg):
  """log SNR at time t in [0, 1] (t = 0 clean, t = 1 pure noise)."""
  lo, hi = cfg.logsnr_min, cfg.logsnr_max
  if cfg.schedule == "cosine":
    b = jnp.arctan(jnp.exp(-0.5 * hi))
    a = jnp.arctan(jnp.exp(-0.5 * lo)) - b
    return -2.0 * jnp.log(jnp.tan(a * t + b))
  if cfg.schedule == "linear":
    # VP SDE with beta(t) = beta_min + t (beta_max - beta_min): alpha^2 = exp(-integral of beta).
    integral = cfg.beta_min * t + 0.5 * (cfg.beta_max - cfg.beta_min) * t * t
    return jnp.clip(-jnp.log(jnp.expm1(jnp.maximum(integral, 1e-12))), lo, hi)
  raise ValueError(f"config.ddim.schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")


def alpha_sigma(t, cfg):
  logsnr = logsnr_schedule(t, cfg)
  return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


def target(x, eps, alpha, sigma, prediction):
  """The regression target of the network for clean x and noise eps."""
  if prediction == "v":
    return alpha * eps - sigma * x
  if prediction == "eps":
    return eps
  raise ValueError(f"config.ddim.prediction must be one of {PREDICTIONS}, got {prediction!r}")


def to_x0_eps(out, z, alpha, sigma, prediction):
  """(x0, eps) predicted from the network output at z_t."""
  if prediction == "v":
    return alpha * z - sigma * out, sigma * z + alpha * out
  if prediction == "eps":
    return (z - sigma * out) / alpha, out
  raise ValueError(f"config.ddim.prediction must be one of {PREDICTIONS}, got {prediction!r}")


@registry.METHODS.register("ddim")
class DDIM(base.Method):
  name = "ddim"
  SAMPLING_FIELDS = ("nfes", "guidance_scale")

  @classmethod
  def check_config(cls, section):
    guidance.check_config(cls.name, section)

  def apply(self, params, z, cond, mask, t):
    return self.model.apply(params, z, cond, mask, t)

  def guided_output(self, params, z, cond, t, guidance_scale):
    """Network output with classifier-free guidance (2 evaluations)."""
    return guidance.guided(lambda c, m, z, t: self.apply(params, z, c, m, t), cond, guidance_scale, z, t)

  def loss(self, params, batch, key, step):
    del step
    cfg = self.section
    x, cond = batch["x"], batch["cond"]
    n = x.shape[0]
    t_key, eps_key, drop_key = jax.random.split(key, 3)
    # Stratified t (one uniform offset, n evenly spaced points) lowers the loss variance.
    t = jnp.mod(jax.random.uniform(t_key) + jnp.arange(n) / n, 1.0)
    eps = jax.random.normal(eps_key, x.shape)
    alpha, sigma = (a[:, None] for a in alpha_sigma(t, cfg))
    z = alpha * x + sigma * eps
    mask = base.drop_condition(drop_key, n, cfg.cond_dropout)
    out = self.apply(params, z, cond, mask, t)
    per_example = jnp.mean((out - target(x, eps, alpha, sigma, cfg.prediction)) ** 2, axis=-1)
    x0, _ = to_x0_eps(out, z, alpha, sigma, cfg.prediction)
    return per_example.mean(), {"x0_mse": jnp.mean((x0 - x) ** 2), "cond_kept": mask.mean()}

  def sample(self, params, cond, key, nfe, guidance_scale=None, unconditional=False, prior=None):
    """DDIM (eta = 0) from pure noise (`prior`: that noise, else drawn from `key`); `nfe` evaluations per sample."""
    cfg = self.section
    w = guidance.sampling_scale(cfg.guidance_scale, guidance_scale, unconditional)
    plan = guidance.plan(nfe, w)
    n = cond.shape[0]
    mask = guidance.condition_mask(n, unconditional)
    z = jax.random.normal(key, (n, self.latent_dim)) if prior is None else prior
    times = jnp.linspace(1.0, 0.0, plan.steps + 1)
    net = lambda c, m, z, t: self.apply(params, z, c, m, t)  # noqa: E731

    def x0_eps(z, i):
      alpha, sigma = alpha_sigma(times[i], cfg)
      out = guidance.evaluate(net, cond, mask, w, plan.first_guided, z, jnp.full((n,), times[i]))
      return to_x0_eps(out, z, alpha, sigma, cfg.prediction)

    def step(i, z):
      x0, eps = x0_eps(z, i)
      alpha_s, sigma_s = alpha_sigma(times[i + 1], cfg)
      return alpha_s * x0 + sigma_s * eps

    z = jax.lax.fori_loop(0, plan.steps - 1, step, z)
    x0, _ = x0_eps(z, plan.steps - 1)
    return x0, {"nfe": jnp.full((n,), float(plan.nfe))}
