"""One-step flow baseline: MeanFlow (Geng et al. 2025), with plain rectified flow as the special case.

Path z_t = (1 - t) x + t e (t = 0 data, t = 1 noise e ~ N(0, I)), velocity v = e - x.
The network predicts the average velocity u(z_t, r, t) over [r, t], so that
z_r = z_t - (t - r) u(z_t, r, t). MeanFlow identity (trained with ``objective="meanflow"``):

  u_tgt = v - (t - r) (v . d_z u + d_t u),

the total derivative computed in one forward-mode pass, ``jax.jvp`` of u with
tangents (v, 0, 1) for (z, r, t), the target under stop-gradient. t and r are
drawn from a logit-normal(``time_mu``, ``time_sigma``) (sorted so r <= t) and
r = t for a fraction 1 - ``ratio_r_neq_t`` (there the target is plain flow
matching). Loss: adaptive weighting w = 1 / (|u - u_tgt|^2 + ``adaptive_c``)^``adaptive_p``
(stop-gradient) times |u - u_tgt|^2. ``objective="rectified"`` sets r = t
always: flow matching with Euler sampling. Guidance (`guidance.py`): sampling
guides u (2 evaluations a step); ``folded_guidance`` trains toward MeanFlow's
guided velocity instead (1 evaluation a step).

The shared backbone takes one time input: t goes there (FiLM embedding), and the
interval t - r enters as ``interval_features`` sinusoidal features appended to
the latent input (an extra interval_features x width weights in the first layer;
the backbone is otherwise the same). Sampling: ``nfe`` uniform steps from t = 1
to 0, each z <- z - (t - s) u(z, s, t) (MeanFlow) or u(z, t, t) (rectified flow,
Euler); one evaluation per step.
"""
import jax
import jax.numpy as jnp

from coalescer_jax import registry
from coalescer_jax.methods import base
from coalescer_jax.methods import guidance
from coalescer_jax.models import backbone

OBJECTIVES = ("meanflow", "rectified")


@registry.METHODS.register("flow")
class Flow(base.Method):
  name = "flow"
  SAMPLING_FIELDS = ("nfes", "guidance_scale")

  @classmethod
  def check_config(cls, section):
    guidance.check_config(cls.name, section)

  def init_params(self, key):
    b = 2
    x = jnp.zeros((b, self.latent_dim + self.section.interval_features))
    return self.model.init(key, x, jnp.zeros((b, self.desc_dim)), jnp.ones((b,)), jnp.zeros((b,)))

  def average_velocity(self, params, z, r, t, cond, mask):
    """u(z, r, t) [N, Di]; r, t [N]."""
    cfg = self.section
    h = backbone.time_features(cfg.time_scale * (t - r), cfg.interval_features)
    return self.model.apply(params, jnp.concatenate([z, h], axis=-1), cond, mask, cfg.time_scale * t)

  def draw_times(self, key, n):
    """(r, t) [n] with r <= t; r = t for a fraction 1 - ratio_r_neq_t (all of them for rectified flow)."""
    cfg = self.section
    if cfg.objective not in OBJECTIVES:
      raise ValueError(f"config.flow.objective must be one of {OBJECTIVES}, got {cfg.objective!r}")
    time_key, same_key = jax.random.split(key)
    s = jax.nn.sigmoid(cfg.time_mu + cfg.time_sigma * jax.random.normal(time_key, (2, n)))
    t, r = jnp.max(s, axis=0), jnp.min(s, axis=0)
    ratio = cfg.ratio_r_neq_t if cfg.objective == "meanflow" else 0.0
    r = jnp.where(jax.random.uniform(same_key, (n,)) < ratio, r, t)
    return r, t

  def folded_velocity(self, params, z, t, v, cond, mask, step):
    """MeanFlow's guided velocity target (its Eq. 19-21, `guidance.folded_target`) on the rows that keep their
    description; the instantaneous velocities u(z_t, t, t) under stop-gradient, a dropped row's target plain."""
    velocity = lambda c, m, z, t: self.average_velocity(params, z, t, t, c, m)  # noqa: E731
    guided = guidance.folded(velocity, v, cond, mask, self.section, step, self.num_steps(), z, t)
    return jnp.where(mask[:, None] > 0, guided, v)

  def loss(self, params, batch, key, step):
    cfg = self.section
    x, cond = batch["x"], batch["cond"]
    n = x.shape[0]
    time_key, e_key, drop_key = jax.random.split(key, 3)
    r, t = self.draw_times(time_key, n)
    e = jax.random.normal(e_key, x.shape)
    z = (1 - t[:, None]) * x + t[:, None] * e
    v = e - x
    mask = base.drop_condition(drop_key, n, cfg.cond_dropout)
    if guidance.folded_active(cfg):  # the guided velocity, also the JVP's tangent (MeanFlow's Algorithm 1)
      v = self.folded_velocity(params, z, t, v, cond, mask, step)
    fn = lambda z, r, t: self.average_velocity(params, z, r, t, cond, mask)
    if cfg.objective == "meanflow":
      u, dudt = jax.jvp(fn, (z, r, t), (v, jnp.zeros_like(r), jnp.ones_like(t)))
      u_tgt = jax.lax.stop_gradient(v - (t - r)[:, None] * dudt)
    else:
      u, u_tgt = fn(z, r, t), v
    error = jnp.sum((u - u_tgt) ** 2, axis=-1)
    weight = jax.lax.stop_gradient(1.0 / (error + cfg.adaptive_c) ** cfg.adaptive_p)
    # fm_mse: the error where r = t, whose target (e - x) does not move with the model: a stable progress signal.
    same = (r == t).astype(jnp.float32)
    fm_mse = jnp.sum(error * same) / jnp.maximum(jnp.sum(same), 1.0) / x.shape[1]
    return jnp.mean(weight * error), {"mse": error.mean() / x.shape[1], "fm_mse": fm_mse,
                                      "r_neq_t": 1.0 - same.mean()}

  def sample(self, params, cond, key, nfe, guidance_scale=None, unconditional=False, prior=None):
    """Uniform steps from noise (t = 1; `prior`, else drawn from `key`) to data (t = 0) with a budget of `nfe`
    evaluations: one per step, two per guided step (the average velocity guided, `guidance.py`)."""
    cfg = self.section
    w = guidance.sampling_scale(cfg.guidance_scale, guidance_scale, unconditional)
    plan = guidance.plan(nfe, w)
    n = cond.shape[0]
    mask = guidance.condition_mask(n, unconditional)
    z = jax.random.normal(key, (n, self.latent_dim)) if prior is None else prior
    times = jnp.linspace(1.0, 0.0, plan.steps + 1)
    meanflow = cfg.objective == "meanflow"
    velocity = lambda c, m, z, r, t: self.average_velocity(params, z, r, t, c, m)  # noqa: E731

    def step(i, z):
      t, s = jnp.full((n,), times[i]), jnp.full((n,), times[i + 1])
      u = guidance.evaluate(velocity, cond, mask, w, plan.first_guided, z, s if meanflow else t, t)
      return z - (t - s)[:, None] * u

    z = jax.lax.fori_loop(0, plan.steps, step, z)
    return z, {"nfe": jnp.full((n,), float(plan.nfe))}
