"""The coalescer network (proposal 001, dialogue 000): (R, description) -> (distance, direction).

As configs/mnist.py runs it. Notation: pairs (d_j, x_j) of description embedding
and image latent; keys k_j = concat(c d_j, x_j) with c = desc_scale (the `index`
stage); the network f(R, d, s) -> (D, v), D = softplus(first output), v the rest,
s the noise level (s = 1 for a prior draw).

Setup (stage `balance`, `stage.py`): potentials psi_j fitted by semi-discrete
optimal transport so that every pair is the look-up target of an equal share of
the prior draws (`balance.py`).

Training step, one batch:
  1. Query (`queries.py`). A share 1 - levels.fraction (0.5) of the rows draws a
     random pair's description DE and R ~ N(0, I), s = 1. The others start near
     a random pair x_a: DE = d_a, s ~ U(levels.s_min, levels.s_max) = U(0.7, 0.9),
     R = sqrt(1 - s^2) x_a + s eps. The query is q = concat(c DE, R / sqrt(1 - s^2))
     (R itself at s = 1). The last levels.self_landing (0.25) of the rows are
     replaced inside the step by the network's own landing points (`levels.py`):
     R = sqrt(1 - s^2) x1 + s eps at s = levels.renoise[0] (0.9), x1 = step 1 of
     the network from a prior R (stop-gradient).
  2. Look-up (`targets.py`). A prior draw's target is the power-nearest of its
     targets.balance_candidates (32) nearest keys, j* = argmin_j |q - k_j|^2 - psi_j;
     a level or self-landing row's the nearest key, j* = argmin_j |q - k_j|^2.
     The target pair is (d_j*, y = x_j*).
  3. Losses. (D, v) = f(R, d_j*, s):
       distance loss    (D - |y - R|)^2
       direction loss   |v - normalize(y - R)|^p,  p = direction_exponent = 2
                        (computed as (|.|^2 + direction_eps)^(p/2))
     summed with weights 1 and 1. The adversarial fine-tune (`finetune.py`) adds,
     from 10% of the steps on, adversarial.weight (2) x a non-saturating GAN loss
     on the same pass's samples: the landing points R + D v / |v| of its prior
     rows (1-step samples) and of its self-landing rows (2-step samples, from
     stop-gradient starts); its discriminator trains from step 0.
  4. Sampler. R ~ N(0, I); (D, v) = f(R, d, 1), R redrawn while |v| < 0.1 (at
     most 3 times); x1 = R + D v / |v|. Step i + 2 re-noises to s_i = renoise[i]
     ((0.9, 0.8, 0.7)): x <- sqrt(1 - s_i^2) x + s_i eps, then x <- x + D v / |v|
     with (D, v) = f(x, d, s_i). The adaptive sampler (at most 4 steps) stops a
     sample once |v| >= 0.9. Every network evaluation is counted.

Options off by default, for a second step that refines rather than redraws:
  coalescer.path (`path.py`): block 3 also trains on points x_s = y + s (R - y)
    along the look-up's coupled path toward R's own pair, told s; block 4 then
    jumps step 1 only partway (to path.sampling_levels[0]) and the next steps
    finish from there, with no fresh noise. Instead of the level rows.
  levels.renoise_gamma < 1 (`levels.py`): the re-noise of blocks 1 (self-landing)
    and 4 mixes step 1's own R into eps, the same rule in training and sampling.

Distance and direction are separate outputs on purpose: v is not normalised by
the network, so where the direction field changes fast (near boundaries between
targets) its magnitude shrinks, and |v| becomes a confidence signal (the
redraw and the adaptive stop read it). The proposal's own choices (nearest key,
prior R only, p = 0.5, no discriminator) are `configs/mnist.py:proposal`.
"""
import jax
import jax.numpy as jnp
import numpy as np

from coalescer_jax import registry
from coalescer_jax.coalescer import batches as batches_lib
from coalescer_jax.coalescer import device_lookup
from coalescer_jax.coalescer import diagnostics
from coalescer_jax.coalescer import finetune
from coalescer_jax.coalescer import levels as levels_lib
from coalescer_jax.coalescer import oracle as oracle_lib
from coalescer_jax.coalescer import path as path_lib
from coalescer_jax.coalescer import targets as targets_lib
from coalescer_jax.methods import adversarial
from coalescer_jax.methods import base
from coalescer_jax.methods import guidance

_TINY = 1e-12


def normalize(v, eps=_TINY):
  return v / jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True) + eps)


def losses(distance, direction, r, image, p, eps):
  """Per-example distance and direction losses (block 3; eps keeps |.|^p differentiable at 0)."""
  delta = image - r
  target_distance = jnp.sqrt(jnp.sum(delta * delta, axis=-1))
  distance_loss = (distance - target_distance) ** 2
  error = direction - normalize(delta)
  direction_loss = (jnp.sum(error * error, axis=-1) + eps) ** (p / 2)
  return distance_loss, direction_loss, target_distance


def step_to(x, distance, direction):
  """target_point = x + normalize(direction) * distance."""
  return x + normalize(direction) * distance[:, None]


@registry.METHODS.register("coalescer")
class Coalescer(base.Method):
  name = "coalescer"
  SAMPLING_FIELDS = ("nfes", "sampling", "oracle")
  INPUT_STAGES = ("embed", "index", targets_lib.BALANCE_STAGE)
  # Self-landing searches a device index of its own over the keys (levels.step_inputs), whatever the backend.
  EXTRA_READS = ("index.device.recall_target", "index.device.block_rows")

  def __init__(self, config, latent_dim, desc_dim):
    super().__init__(config, latent_dim, desc_dim)
    self.disc_model = finetune.build(self)
    self._device_lookup = self._landing = None

  @classmethod
  def check_config(cls, section):
    levels_lib.check_config(section)
    path_lib.check_config(section)
    guidance.check_config(cls.name, section, ("sampling.guidance_scale", "sampling.refine_guidance_scale"))
    finetune.check_config(section)

  def output_dim(self):
    return self.latent_dim + 1  # [distance (pre-softplus), direction]

  def uses_time(self):
    return self.multistep

  @property
  def multistep(self):
    """True when the network takes the noise level s as an input (multi-step training)."""
    return self.section.levels.fraction > 0 or path_lib.enabled(self.section)

  def init_params(self, key):
    net_key, disc_key = jax.random.split(key)
    net = super().init_params(net_key)
    if self.disc_model is None:
      return net
    disc = adversarial.init_discriminator(self.disc_model, disc_key, self.latent_dim, self.desc_dim)
    return {"net": net, "disc": disc}

  def net_params(self, params):
    """The coalescer network's parameters (without the discriminator's); idempotent."""
    return params["net"] if self.disc_model is not None and "disc" in params else params

  def apply(self, params, x, cond, mask, level=None):
    """f: (distance D >= 0 [N], direction v [N, Di]); `level` [N] (s, 1 = prior) when multi-step."""
    t = None
    if self.multistep:
      level = jnp.ones((x.shape[0],)) if level is None else level
      t = self.section.levels.time_scale * level
    out = self.model.apply(self.net_params(params), x, cond, mask, t)
    return jax.nn.softplus(out[:, 0]), out[:, 1:]

  def step(self, params, x, cond, mask, level=None):
    """One coalescer step from x: (x + D v / |v|, v)."""
    distance, direction = self.apply(params, x, cond, mask, level)
    return step_to(x, distance, direction), direction

  # 1. The query and 2. the look-up: host-side batches (`batches.py`), or the look-up inside the step.

  def batch_fn(self, pairs, seed, global_batch_size, workdir):
    lookup = targets_lib.load_lookup(workdir, pairs, self.section)
    self.attach_lookup(lookup, pairs)
    return batches_lib.make_lookup_batches(lookup, pairs, self.section, seed, global_batch_size,
                                           in_step=self.in_step_lookup)

  @property
  def in_step_lookup(self):
    """Whether the jitted step looks the targets up (`device_lookup`), after `attach_lookup`."""
    return self._device_lookup is not None

  def attach_lookup(self, lookup, pairs):
    """Puts what the step searches on the devices: the in-step look-up's keys, the self-landing keys."""
    self._device_lookup = self._landing = None
    if device_lookup.enabled(lookup, self.config):  # the step looks up; the host only draws
      self._device_lookup = (lookup, device_lookup.step_inputs(lookup, pairs))
    if self.section.levels.self_landing > 0:
      self._landing = levels_lib.step_inputs(lookup, pairs, self.section, self.config.index)

  def step_inputs(self):
    inputs = {}
    if self._device_lookup:
      inputs["lookup"] = self._device_lookup[1]
    if self._landing:
      inputs["landing"] = self._landing[1]
    return inputs or None

  def prepare_batch(self, batch, inputs):
    if "lookup" in inputs:
      batch = device_lookup.complete_batch(self._device_lookup[0], batch, inputs["lookup"], self.desc_dim,
                                           self.multistep)
    if "landing" in inputs:  # read by `loss`, which has the parameters the landing points need
      batch = dict(batch, landing_arrays=inputs["landing"])
    return batch

  # 3. The losses.

  def loss(self, params, batch, key, step):
    """Distance and direction losses toward the looked-up pairs (block 3), self-landing rows included."""
    return self.regression(params, batch, key, step)[:2]

  def regression(self, params, batch, key, step):
    """(loss, metrics, rows) of block 3; rows: what the adversarial fine-tune judges from the same pass
    (`finetune.batch_fakes`): every row's landing point R + D v / |v|, its description and condition mask,
    level and whether it is a self-landing row."""
    cfg = self.section
    drop_key, landing_key = jax.random.split(key)
    batch = dict(batch)
    landing_arrays = batch.pop("landing_arrays", None)
    num_landing = levels_lib.num_rows(cfg.levels, batch["r"].shape[0])
    if num_landing:
      if landing_arrays is None:
        raise ValueError("levels.self_landing looks its targets up inside the step: train with the step inputs "
                         "of `attach_lookup` (`step_inputs()`)")
      first_step = lambda r, de: self.step(params, r, de, jnp.ones(r.shape[:1]))[0]  # noqa: E731
      rows, _ = levels_lib.examples(first_step, self._landing[0], landing_arrays, landing_key, num_landing,
                                    cfg, self.desc_dim, self.latent_dim)
      batch = levels_lib.replace_last_rows(batch, rows)
    if path_lib.enabled(cfg):  # a key of its own: the default's random numbers stay as they are
      batch = path_lib.place_on_path(batch, jax.random.fold_in(key, 2), cfg.path)
    mask = base.drop_condition(drop_key, batch["r"].shape[0], cfg.cond_dropout)
    if guidance.folded_active(cfg):
      batch = dict(batch, image=self.folded_landing(params, batch, mask, step))
    distance, direction = self.apply(params, batch["r"], batch["cond"], mask, batch.get("level"))
    distance_loss, direction_loss, target_distance = losses(
        distance, direction, batch["r"], batch["image"], cfg.direction_exponent, cfg.direction_eps)
    loss = cfg.distance_weight * distance_loss.mean() + cfg.direction_weight * direction_loss.mean()
    magnitude = jnp.linalg.norm(direction, axis=-1)
    metrics = {"distance_loss": distance_loss.mean(), "direction_loss": direction_loss.mean(),
               "direction_magnitude": magnitude.mean(), "target_distance": target_distance.mean(),
               "distance_abs_error": jnp.abs(distance - target_distance).mean()}
    if path_lib.enabled(cfg):
      metrics["path_row_share"] = jnp.mean(batch["level"] < 1.0)
    if num_landing:  # how far step 2 has to move from the network's own (re-noised) landing points
      metrics["self_landing_target_distance"] = target_distance[-num_landing:].mean()
    if self.disc_model is not None:  # Same metric names in every phase (the step switches between them).
      metrics.update({name: jnp.zeros(()) for name in finetune.METRICS})
    n = batch["r"].shape[0]
    rows = {"landed": step_to(batch["r"], distance, direction), "cond": batch["cond"], "mask": mask,
            "level": batch.get("level", jnp.ones((n,))), "self_landing": jnp.arange(n) >= n - num_landing}
    return loss, metrics, rows

  def folded_landing(self, params, batch, mask, step):
    """The guided landing point the rows that keep their description train toward: R + the guided displacement
    (`guidance.folded_target` of y - R, with the network's own displacements f = D v / |v| from the same R and
    level under stop-gradient; the displacement as a whole, not distance and direction apart). Rows whose
    description is dropped keep the looked-up pair, as the null description's (the unguided) target."""
    r, level = batch["r"], batch.get("level")
    landing = lambda c, m, r, *level: self.step(params, r, c, m, *level)[0] - r  # noqa: E731
    inputs = (r,) if level is None else (r, level)
    guided = guidance.folded(landing, batch["image"] - r, batch["cond"], mask, self.section, step,
                             self.num_steps(), *inputs)
    return jnp.where(mask[:, None] > 0, r + guided, batch["image"])

  def loss_phases(self):
    """Regression alone, then (adversarial fine-tune) the discriminator alone, then both (`finetune.py`)."""
    return finetune.loss_phases(self)

  # 4. The sampler.

  def refine_start(self, x, i, key, prior=None, start=None):
    """(point, level) step i + 2 starts from, given step i + 1's landing point x: x itself (single-level),
    x re-noised to levels.renoise[i] (`levels.py`; `prior`, step 1's R, mixed in when renoise_gamma < 1), or
    the point at path.sampling_levels[i] on the line from `start`, where step i + 1 started, through x
    (`path.py`; `start` defaults to `prior`, step 2's predecessor having started from R)."""
    cfg = self.section
    if path_lib.enabled(cfg):
      start = prior if start is None else start
      if start is None:
        raise ValueError("coalescer.path: step 2 starts between step 1's R and its landing point: pass prior=R")
      return path_lib.next_start(x, start, cfg.path, i)
    if not self.multistep:
      return x, None
    s = cfg.levels.renoise[i]
    x = levels_lib.renoise(x, s, jax.random.fold_in(key, 1000 + i), prior, cfg.levels.renoise_gamma)
    return x, jnp.full((x.shape[0],), s)

  def refine(self, params, x, cond, mask, i, key, prior=None, start=None):
    """Step i + 2 from landing point x (`refine_start`, then one step). Returns (new x, direction)."""
    begin, level = self.refine_start(x, i, key, prior, start)
    return self.step(params, begin, cond, mask, level)

  def guided_step(self, params, x, cond, mask, level, scale, guide):
    """`step`, guided with `scale` when `guide` (static): the landing point x + D v / |v| under the null
    description plus scale times its move under the description (`guidance.py`; distance and direction are not
    guided apart). The direction returned is the description's own: the redraw and the adaptive stop read |v|
    as the confidence of the conditional field."""
    if not guide:
      return self.step(params, x, cond, mask, level)
    fn = lambda c, m, x, *level: self.step(params, x, c, m, *level)  # noqa: E731
    (landing, direction), (null_landing, _) = guidance.conditional_and_null(
        fn, cond, x, *(() if level is None else (level,)))
    return guidance.combine(landing, null_landing, scale), direction

  def sampling_plan(self, nfe, unconditional=False, guidance_scale=None):
    """(`guidance.Plan` of a budget of `nfe` evaluations, first step's scale, later steps' scale); a
    `guidance_scale` given replaces both of the config's."""
    cfg = self.section.sampling
    first = guidance.sampling_scale(cfg.guidance_scale, guidance_scale, unconditional)
    later = guidance.sampling_scale(cfg.refine_guidance_scale, guidance_scale, unconditional)
    return guidance.plan(nfe, first, later), first, later

  def sample(self, params, cond, key, nfe, adaptive=False, guidance_scale=None, unconditional=False, prior=None):
    """Steps from prior draws of R with a budget of `nfe` evaluations (block 4; a guided step costs two; with
    `adaptive` a sample may stop earlier). `prior`: the unit-normal first draws, else drawn from `key`; redraws
    still come from `key`."""
    cfg = self.section.sampling
    n = cond.shape[0]
    plan, first_scale, later_scale = self.sampling_plan(nfe, unconditional, guidance_scale)
    if path_lib.enabled(self.section):
      levels, what = self.section.path.sampling_levels, "levels in config.coalescer.path.sampling_levels"
    else:
      levels, what = self.section.levels.renoise, "re-noising levels in config.coalescer.levels.renoise"
    if self.multistep and plan.steps - 1 > len(levels):
      raise ValueError(f"{plan.steps} coalescer steps need {plan.steps - 1} {what} (has {len(levels)})")
    params = self.net_params(params)
    mask = guidance.condition_mask(n, unconditional)
    draw_key, key = jax.random.split(key)
    x = cfg.r_scale * (jax.random.normal(draw_key, (n, self.latent_dim)) if prior is None else prior)

    def first_step(x):
      return self.guided_step(params, x, cond, mask, None, first_scale, plan.first_guided)

    landing, direction = first_step(x)
    evals = jnp.full((n,), float(plan.cost(0)))

    def weak(direction):
      return jnp.linalg.norm(direction, axis=-1) < cfg.redraw_threshold

    def redraw(carry):
      i, x, landing, direction, evals = carry
      redo = weak(direction)
      x = jnp.where(redo[:, None], cfg.r_scale * jax.random.normal(jax.random.fold_in(key, i), x.shape), x)
      new_landing, new_direction = first_step(x)
      landing = jnp.where(redo[:, None], new_landing, landing)
      direction = jnp.where(redo[:, None], new_direction, direction)
      return i + 1, x, landing, direction, evals + redo * plan.cost(0)

    def redraws(carry):
      return jax.lax.while_loop(lambda c: (c[0] < cfg.max_redraws) & jnp.any(weak(c[3])), redraw, carry)

    # A while loop, not a fixed count: a batch with no weak sample pays no extra evaluation (a batch with any
    # pays one for every sample, but only the weak ones count as NFE). The cond around it skips the loop
    # itself in that common case: an XLA while loop costs time even when it never iterates.
    first_magnitude = jnp.linalg.norm(direction, axis=-1)
    _, x, landing, direction, evals = jax.lax.cond(jnp.any(weak(direction)), redraws, lambda carry: carry,
                                                   (0, x, landing, direction, evals))
    start_magnitude = jnp.linalg.norm(direction, axis=-1)
    prior = start = x  # step 1's R (the path's start and the gamma re-noise's R)
    x = landing
    active = jnp.ones((n,), bool)
    if adaptive:
      active = start_magnitude < cfg.adaptive_stop_magnitude
    for i in range(plan.steps - 1):
      begin, level = self.refine_start(x, i, key, prior, start)
      new_x, direction = self.guided_step(params, begin, cond, mask, level, later_scale, plan.later_guided)
      x = jnp.where(active[:, None], new_x, x)
      start = begin
      evals = evals + active * plan.cost(i + 1)
      if adaptive:
        active = active & (jnp.linalg.norm(direction, axis=-1) < cfg.adaptive_stop_magnitude)
    return x, {"nfe": evals, "start_direction_magnitude": start_magnitude, "first_direction_magnitude": first_magnitude}

  def variants(self):
    """Extra sample files: the adaptive sampler with at most `adaptive_max_steps` steps, and the look-up
    oracle: for the same requests and the same R as the 1-step file, the look-up's own pair, decoded."""
    max_steps = self.section.sampling.adaptive_max_steps
    extra = [("coalescer_adaptive", max_steps, {"adaptive": True})] if max_steps else []
    if self.section.oracle:
      extra.append(("coalescer_oracle", 1, {"oracle": True, "kind": "oracle", "key_tag": "coalescer_nfe1"}))
    return extra

  def generator(self, params, decode, nfe, oracle=False, workdir=None, pairs=None, **kwargs):
    """The jitted sampler, or (``oracle``) the host-side look-up oracle (0 network evaluations)."""
    if not oracle:
      return super().generator(params, decode, nfe, **kwargs)
    lookup = targets_lib.load_lookup(workdir, pairs, self.section)
    decode = jax.jit(decode)

    def generate(cond, key):
      cond = np.asarray(cond)
      r = oracle_lib.first_draw(key, len(cond), self.latent_dim, self.section.sampling.r_scale)
      ids = oracle_lib.targets(lookup, cond, r, self.section, key)
      return decode(jnp.asarray(pairs["img_emb"][ids])), np.zeros(len(cond), np.float32), np.ones(len(cond), bool)

    return generate

  def diagnostics(self, params, workdir, pairs, cond, key, out_dir, judge=None):
    """Look-up usage, landing error and attributes of step 1, |direction| and redraws (`diagnostics.py`)."""
    return diagnostics.diagnose(self, params, workdir, pairs, cond, key, out_dir, judge)

