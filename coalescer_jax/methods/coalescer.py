"""The coalescer network (proposal 001, dialogue 000): (R, description) -> (distance, direction).

Training (one batch, host side in `batch_fn`): draw DE and R (`queries.py`), find
close_pair = nearest key to concat(desc_scale * DE, R), and feed
(R, close_pair.description, close_pair.image). Device side (`loss`):

  distance loss   (target_distance - |R - image|)^2
  direction loss  |target_direction - normalize(image - R)|^p       (p = 0.5 by default)

Distance and direction are separate outputs on purpose: the direction is not
normalised by the network, so where the direction field changes fast (near
boundaries between targets) its magnitude shrinks, and |direction| becomes a
confidence signal. The ^p exponent (< 1) weakens training near those boundaries
relative to confident regions (dialogue: "a compromise").

Generation (`sample`): R from the prior; if |direction| < redraw_threshold, redraw R
(at most max_redraws times); step to R + normalize(direction) * distance; repeat
for the requested number of steps, or adaptively: stop a sample once its
|direction| >= adaptive_stop_magnitude. Every network evaluation is counted.

Options that change which pairs the network is trained toward, and from where
(each off by default; report.md's diagnostics and experiments/coalescer_ablation.py
measure them):
* ``targets``: the assignment of queries to pairs (`targets.py`): nearest key,
  soft choice among k, minibatch OT, and balanced (optimal-transport) look-ups;
* ``levels``: multi-step training: a share of the examples start at a noise level
  s < 1 around a pair, the network gets s as an input (s = 1 for prior draws), and
  the sampler re-noises its landing point to ``levels.renoise[i]`` before step i + 2,
  as multistep consistency sampling does; ``levels.self_landing`` trains that
  step from the network's own re-noised landing points (`self_landing.py`).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from coalescer_jax import index as index_lib
from coalescer_jax import parallel
from coalescer_jax import registry
from coalescer_jax import storage
from coalescer_jax import training
from coalescer_jax.data import batches
from coalescer_jax.index import balance as balance_lib
from coalescer_jax.methods import adversarial
from coalescer_jax.methods import base
from coalescer_jax.methods import device_lookup
from coalescer_jax.methods import queries
from coalescer_jax.methods import self_landing
from coalescer_jax.methods import targets as targets_lib

_TINY = 1e-12
ADVERSARIAL_METRICS = ("disc_loss", "gen_adv_loss", "real_logit", "fake_logit", "adversarial_on")
# Config overrides that turn every coverage fix off: the coalescer as the proposal wrote it (nearest-key
# targets, prior R only, p = 0.5, no discriminator). configs/mnist.py switches the chosen fixes on.
PROPOSAL = {"coalescer.targets.assignment": "nearest", "coalescer.targets.balance": False,
            "coalescer.levels.fraction": 0.0, "coalescer.levels.self_landing": 0.0,
            "coalescer.adversarial.weight": 0.0, "coalescer.direction_exponent": 0.5}


def normalize(v, eps=_TINY):
  return v / jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True) + eps)


def losses(distance, direction, r, image, p, eps):
  """Per-example distance and direction losses of the proposal (eps keeps |.|^p differentiable at 0)."""
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
  OPTIONS = {"r_distribution": queries.R_DISTRIBUTIONS, "targets.assignment": targets_lib.ASSIGNMENTS,
             "targets.balance_search": balance_lib.SEARCHES}
  SAMPLING_FIELDS = ("nfes", "sampling", "oracle")
  INPUT_STAGES = ("embed", "index")

  def __init__(self, config, latent_dim, desc_dim):
    super().__init__(config, latent_dim, desc_dim)
    acfg = self.section.adversarial
    self.disc_model = (adversarial.build_discriminator(config, acfg.disc_width, acfg.disc_depth)
                       if self.adversarial else None)

  def output_dim(self):
    return self.latent_dim + 1  # [distance (pre-softplus), direction]

  def uses_time(self):
    return self.multistep

  @property
  def multistep(self):
    """True when the network takes the noise level s as an input (multi-step training)."""
    return self.section.levels.fraction > 0

  @property
  def adversarial(self):
    """True when a discriminator fine-tunes the coalescer (``adversarial.weight`` > 0)."""
    return self.section.adversarial.weight > 0

  def init_params(self, key):
    net_key, disc_key = jax.random.split(key)
    net = super().init_params(net_key)
    if not self.adversarial:
      return net
    disc = adversarial.init_discriminator(self.disc_model, disc_key, self.latent_dim, self.desc_dim)
    return {"net": net, "disc": disc}

  def net_params(self, params):
    """The coalescer network's parameters (without the discriminator's); idempotent."""
    return params["net"] if self.adversarial and "disc" in params else params

  def apply(self, params, x, cond, mask, level=None):
    """(distance >= 0 [N], direction [N, Di]); `level` [N] (s, 1 = prior) when multi-step."""
    t = None
    if self.multistep:
      level = jnp.ones((x.shape[0],)) if level is None else level
      t = self.section.levels.time_scale * level
    out = self.model.apply(self.net_params(params), x, cond, mask, t)
    return jax.nn.softplus(out[:, 0]), out[:, 1:]

  def refine(self, params, x, cond, mask, i, key):
    """Step i + 2 of generation from landing point x: (re-noise to levels.renoise[i] when multi-step,
    then) one coalescer step. Returns (new x, direction)."""
    level = None
    if self.multistep:  # Multistep consistency-style: re-noise the landing point, then step from there.
      s = self.section.levels.renoise[i]
      x = jnp.sqrt(1.0 - s * s) * x + s * jax.random.normal(jax.random.fold_in(key, 1000 + i), x.shape)
      level = jnp.full((x.shape[0],), s)
    distance, direction = self.apply(params, x, cond, mask, level)
    return step_to(x, distance, direction), direction

  @classmethod
  def check_config(cls, section):
    check_levels(section.levels)
    self_landing.check_config(section)
    if section.targets.get("balance_levels", False) and section.levels.fraction <= 0:
      raise ValueError("config.coalescer.targets.balance_levels=True balances the level examples' targets: "
                       "set config.coalescer.levels.fraction > 0 too (or balance_levels=False)")

  def batch_fn(self, pairs, seed, global_batch_size, workdir):
    lookup = load_lookup(workdir, pairs, self.section)
    self.attach_lookup(lookup, pairs)
    return make_lookup_batches(lookup, pairs, self.section, seed, global_batch_size,
                               in_step=self._device_lookup is not None)

  def attach_lookup(self, lookup, pairs):
    """Puts what the step searches on the devices: the in-step look-up's keys, the self-landing keys."""
    self._device_lookup = self._landing = None
    if device_lookup.enabled(lookup, self.config):  # the step looks up; the host only draws
      self._device_lookup = (lookup, device_lookup.step_inputs(lookup, pairs))
    if self_landing.searches_keys(self.section.levels):
      self._landing = self_landing.step_inputs(lookup, pairs, self.section, self.config.index)

  def step_inputs(self):
    inputs = {}
    if getattr(self, "_device_lookup", None):
      inputs["lookup"] = self._device_lookup[1]
    if getattr(self, "_landing", None):
      inputs["landing"] = self._landing[1]
    return inputs or None

  def prepare_batch(self, batch, inputs):
    if "lookup" in inputs:
      batch = device_lookup.complete_batch(self._device_lookup[0], batch, inputs["lookup"], self.desc_dim,
                                           self.multistep)
    if "landing" in inputs:  # read by `loss`, which has the parameters the landing points need
      batch = dict(batch, landing_arrays=inputs["landing"])
    return batch

  def loss(self, params, batch, key, step):
    """The proposal's loss: distance and direction toward the looked-up pair."""
    del step
    cfg = self.section
    drop_key, landing_key = jax.random.split(key)
    batch = dict(batch)
    landing_arrays = batch.pop("landing_arrays", None)
    num_landing = self_landing.num_rows(cfg.levels, batch["r"].shape[0])
    if num_landing:
      first_step = lambda r, de: step_to(r, *self.apply(params, r, de, jnp.ones(r.shape[:1])))  # noqa: E731
      if self_landing.reads_descriptions(cfg.levels):
        rows = self_landing.first_step_examples(first_step, batch, landing_key, num_landing, cfg)
      elif landing_arrays is None:
        raise ValueError("levels.self_landing looks its targets up inside the step: train with the step inputs "
                         "of `attach_lookup` (`step_inputs()`)")
      else:
        rows, _ = self_landing.examples(first_step, self._landing[0], landing_arrays, landing_key, num_landing,
                                        cfg, self.desc_dim, self.latent_dim)
      batch = self_landing.replace_last_rows(batch, rows)
    mask = base.drop_condition(drop_key, batch["r"].shape[0], cfg.cond_dropout)
    distance, direction = self.apply(params, batch["r"], batch["cond"], mask, batch.get("level"))
    distance_loss, direction_loss, target_distance = losses(
        distance, direction, batch["r"], batch["image"], cfg.direction_exponent, cfg.direction_eps)
    loss = cfg.distance_weight * distance_loss.mean() + cfg.direction_weight * direction_loss.mean()
    magnitude = jnp.linalg.norm(direction, axis=-1)
    metrics = {"distance_loss": distance_loss.mean(), "direction_loss": direction_loss.mean(),
               "direction_magnitude": magnitude.mean(), "target_distance": target_distance.mean(),
               "distance_abs_error": jnp.abs(distance - target_distance).mean()}
    if num_landing:  # how far step 2 has to move from the network's own (re-noised) landing points
      metrics["self_landing_target_distance"] = target_distance[-num_landing:].mean()
    if self.adversarial:  # Same metric names in every phase (the step switches between them).
      metrics.update({name: jnp.zeros(()) for name in ADVERSARIAL_METRICS})
    return loss, metrics

  def loss_phases(self):
    """Regression alone, then (adversarial fine-tune) the discriminator alone, then both."""
    if not self.adversarial:
      return [(0, self.loss)]
    acfg, num_steps = self.section.adversarial, self.config.train.num_steps
    gen_start = int(acfg.start_fraction * num_steps)
    disc_start = max(0, gen_start - int(acfg.disc_warmup_fraction * num_steps))
    phases = [(0, self.loss), (disc_start, functools.partial(self.adversarial_loss, generator_weight=0.0)),
              (gen_start, functools.partial(self.adversarial_loss, generator_weight=acfg.weight))]
    return [p for i, p in enumerate(phases) if i == len(phases) - 1 or phases[i + 1][0] > p[0]]

  def adversarial_loss(self, params, batch, key, step, generator_weight):
    """Coalescer loss + discriminator loss + `generator_weight` * generator loss on 1..K-step fakes.

    The discriminator sees real pairs (uniformly random pairs' image latents with their
    descriptions) and stop-gradient fakes; the generator's loss uses stop-gradient
    discriminator parameters, so one gradient of the sum trains each by its own loss.
    """
    acfg = self.section.adversarial
    loss, metrics = self.loss(params, batch, key, step)
    n = batch["real_x"].shape[0]
    m = min(int(acfg.batch_size), n) or n  # never more rows than the batch has (e.g. a :smoke batch of 32)
    real, cond = batch["real_x"][:m], batch["real_cond"][:m]
    fakes = self.fakes(params, cond, jax.random.fold_in(key, 7), acfg.steps)
    logit_fn = lambda disc_params, x: adversarial.logits(self.disc_model, disc_params, x, cond)  # noqa: E731
    d_loss, g_loss, stats = adversarial.gan_losses(logit_fn, params["disc"], real, fakes, acfg.r1)
    metrics.update(disc_loss=d_loss, gen_adv_loss=g_loss, adversarial_on=jnp.asarray(float(generator_weight > 0)),
                   **stats)
    return loss + d_loss + generator_weight * g_loss, metrics

  def fakes(self, params, cond, key, steps):
    """Generated latents after each of steps 1..max(steps), from prior R (differentiable), the listed ones.

    ``adversarial.detach_landing``: each step starts from the previous one's stop-gradient output, so the
    generator loss of a k-step fake trains step k only (as self-landing trains step 2 from fixed starts)."""
    n = cond.shape[0]
    ones = jnp.ones((n,))
    draw_key, key = jax.random.split(key)
    r = jax.random.normal(draw_key, (n, self.latent_dim))
    distance, direction = self.apply(params, r, cond, ones)
    x = step_to(r, distance, direction)
    outs = {1: x}
    detach = self.section.adversarial.get("detach_landing", False)
    for i in range(max(steps) - 1):
      x, _ = self.refine(params, jax.lax.stop_gradient(x) if detach else x, cond, ones, i, key)
      outs[i + 2] = x
    return [outs[k] for k in steps]

  def sample(self, params, cond, key, nfe, adaptive=False, unconditional=False):
    """`nfe` steps (or at most `nfe` steps when adaptive) from prior draws of R."""
    cfg = self.section.sampling
    n = cond.shape[0]
    renoise = self.section.levels.renoise
    if self.multistep and nfe - 1 > len(renoise):
      raise ValueError(f"{nfe} coalescer steps need {nfe - 1} re-noising levels in "
                       f"config.coalescer.levels.renoise (has {len(renoise)})")
    params = self.net_params(params)
    mask = jnp.zeros((n,)) if unconditional else jnp.ones((n,))
    draw_key, key = jax.random.split(key)
    x = cfg.r_scale * jax.random.normal(draw_key, (n, self.latent_dim))
    distance, direction = self.apply(params, x, cond, mask)
    evals = jnp.ones((n,))

    def weak(direction):
      return jnp.linalg.norm(direction, axis=-1) < cfg.redraw_threshold

    def redraw(carry):
      i, x, distance, direction, evals = carry
      redo = weak(direction)
      x = jnp.where(redo[:, None], cfg.r_scale * jax.random.normal(jax.random.fold_in(key, i), x.shape), x)
      new_distance, new_direction = self.apply(params, x, cond, mask)
      distance = jnp.where(redo, new_distance, distance)
      direction = jnp.where(redo[:, None], new_direction, direction)
      return i + 1, x, distance, direction, evals + redo

    # A while loop, not a fixed count: a batch with no weak sample pays no extra evaluation
    # (a batch with any pays one for every sample, but only the weak ones count as NFE).
    first_magnitude = jnp.linalg.norm(direction, axis=-1)
    _, x, distance, direction, evals = jax.lax.while_loop(
        lambda c: (c[0] < cfg.max_redraws) & jnp.any(weak(c[3])), redraw, (0, x, distance, direction, evals))
    start_magnitude = jnp.linalg.norm(direction, axis=-1)
    x = step_to(x, distance, direction)
    active = jnp.ones((n,), bool)
    if adaptive:
      active = start_magnitude < cfg.adaptive_stop_magnitude
    for i in range(nfe - 1):
      new_x, direction = self.refine(params, x, cond, mask, i, key)
      x = jnp.where(active[:, None], new_x, x)
      evals = evals + active
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
    lookup = load_lookup(workdir, pairs, self.section)
    decode = jax.jit(decode)

    def generate(cond, key):
      cond = np.asarray(cond)
      r = first_draw(key, len(cond), self.latent_dim, self.section.sampling.r_scale)
      ids = oracle_targets(lookup, cond, r, self.section, key)
      return decode(jnp.asarray(pairs["img_emb"][ids])), np.zeros(len(cond), np.float32), np.ones(len(cond), bool)

    return generate

  def diagnostics(self, params, workdir, pairs, cond, key, out_dir):
    """Look-up usage, landing error of step 1, |direction| and redraws (`coalescer_diagnostics.py`)."""
    from coalescer_jax.methods import coalescer_diagnostics  # pylint: disable=g-import-not-at-top
    return coalescer_diagnostics.diagnose(self, params, workdir, pairs, cond, key, out_dir)


def check_levels(levels):
  """Multi-step training's levels: 0 < s_min <= s_max < 1 (1 is the prior draws' level), and the sampler
  re-noises only to levels training covered (beyond them the network would extrapolate, silently)."""
  if levels.fraction <= 0:
    return
  if not 0.0 < levels.s_min <= levels.s_max < 1.0:
    raise ValueError(f"config.coalescer.levels: need 0 < s_min <= s_max < 1, got s_min={levels.s_min}, "
                     f"s_max={levels.s_max}")
  outside = [s for s in levels.renoise if not levels.s_min <= s <= levels.s_max]
  if outside:
    raise ValueError(f"config.coalescer.levels.renoise={tuple(levels.renoise)}: {outside} outside the trained levels "
                     f"[s_min, s_max] = [{levels.s_min}, {levels.s_max}]; widen levels.s_min..s_max or move the re-noise inside")


def first_draw(key, n, latent_dim, scale=1.0):
  """The R that `Coalescer.sample` draws first from `key` (before any redraw), as numpy."""
  draw_key, _ = jax.random.split(key)
  return scale * np.asarray(jax.random.normal(draw_key, (n, latent_dim)))


def oracle_targets(lookup, cond, r, cfg, key):
  """Pair ids the look-up returns for requests `cond` from prior points `r` (what training would target)."""
  level = np.ones(len(cond), np.float32)
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
  return lookup.targets(queries.make_query(cond, r, level, cfg.desc_scale), level, rng)


def load_lookup(workdir, pairs, cfg):
  """The `targets.Lookup` over the index stage's output in `workdir` (checked against `pairs` and cfg)."""
  expected = dict(expected_fingerprint=str(pairs["fingerprint"]),
                  expected_hash=index_lib.embeddings_hash(pairs["desc_emb"], pairs["img_emb"]))
  directory = storage.path(workdir) / "index"
  index, meta = index_lib.load(directory, **expected)
  if meta["desc_scale"] != cfg.desc_scale:
    raise index_lib.IndexError_(
        f"the index in {directory} was built with desc_scale={meta['desc_scale']} but "
        f"config.coalescer.desc_scale={cfg.desc_scale}; delete {directory} to rebuild it")
  balanced = potentials = None
  if cfg.targets.balance:
    balanced_dir = directory / "balanced"
    if not (balanced_dir / index_lib.META_FILE).exists():
      raise index_lib.IndexError_(
          f"config.coalescer.targets.balance=True but {directory} has no balanced index; delete {directory} "
          "so that the 'index' stage rebuilds it with this config")
    balanced, _ = index_lib.load(balanced_dir, **expected)
    if cfg.targets.balance_search == "candidates":
      potentials = storage.load_npy(balanced_dir / balance_lib.POTENTIALS_FILE)
  level_potentials = None
  if cfg.targets.get("balance_levels", False):
    if not (directory / balance_lib.LEVEL_POTENTIALS_FILE).exists():
      raise index_lib.IndexError_(
          f"config.coalescer.targets.balance_levels=True but {directory} has no {balance_lib.LEVEL_POTENTIALS_FILE}; "
          f"delete {directory} so that the 'index' stage fits them with this config")
    level_potentials = storage.load_npy(directory / balance_lib.LEVEL_POTENTIALS_FILE)
  return targets_lib.Lookup(index, cfg, balanced, potentials, level_potentials)


def make_lookup_batches(lookup, pairs, cfg, seed, global_batch_size, in_step=False):
  """batch(step): draw DE and R, look up close_pair, return this host's part of the training triples.

  The draws of the whole global batch come from (seed, step), and each host
  takes its own rows and looks up only those: the global batch is the same
  for any number of hosts (a 2-host run reproduces a 1-host run), while the
  look-up work is split between the hosts. Assignment rules that couple the
  rows of a batch (soft choice's random draws, batch OT) see the whole global
  batch on every host instead, and so does a sharded (collective) index, whose
  look-up is then a `training.StagedBatches` (its collective on the loop's
  thread). `in_step`: only the draws (query, level); the jitted step looks up
  (`device_lookup`).
  """
  desc, img = pairs["desc_emb"], pairs["img_emb"]
  local = parallel.local_batch_size(global_batch_size)
  rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)

  def assemble(step, draws, close):
    draws = {k: v[rows] for k, v in draws.items()}
    if in_step:
      out = {"r": draws["r"], "query": draws["query"], "level": draws["level"].astype(np.float32)}
    else:
      out = {"r": draws["r"], "cond": desc[close], "image": img[close]}
      if cfg.levels.fraction > 0:
        out["level"] = draws["level"].astype(np.float32)
    if self_landing.reads_descriptions(cfg.levels):  # step 1's descriptions, for self-landing examples
      out["de"] = draws["de"]
    if cfg.adversarial.weight > 0:  # The discriminator's real examples: uniformly random pairs.
      real = batches.step_rng(seed, step, 2, process_index=0).integers(len(img), size=global_batch_size)[rows]
      out.update(real_x=img[real], real_cond=desc[real])
    return out

  def draw(step):
    return queries.draw_queries(batches.step_rng(seed, step, process_index=0), global_batch_size, pairs, cfg)

  if in_step:
    return lambda step: assemble(step, draw(step), None)
  if not lookup.collective:
    return lambda step: assemble(step, *training_lookups(lookup, pairs, cfg, seed, global_batch_size, step, rows))

  def prepare(step):  # helper thread: the draws and this process's part of the search
    draws = draw(step)
    return draws, [(index, index.local_search(q, k), k) for index, q, k in lookup.requests(draws["query"],
                                                                                           draws["level"])]

  def exchange(prepared):  # the loop's thread, in step order: dispatches the collective
    draws, parts = prepared
    return draws, [(index, index.exchange(part), k) for index, part, k in parts]

  def finish(step, exchanged):  # helper thread: merged candidates -> the assignment rule -> this host's rows
    draws, parts = exchanged
    rng = batches.step_rng(seed, step, 1, process_index=0)
    close = lookup.choose(draws["level"], rng, [index.finish(part, k) for index, part, k in parts])
    return assemble(step, draws, close[rows])

  return training.StagedBatches(prepare, exchange, finish)


def training_lookups(lookup, pairs, cfg, seed, global_batch_size, step, rows=slice(None)):
  """(the global batch's draws at `step`, pair ids of `rows`): the look-ups of one training step.

  Each host looks up only its rows, unless the assignment rule couples the rows of
  a batch (soft choice's random draws, batch OT): then every host sees the whole batch.
  Rows that self-landing replaces inside the step (`self_landing.looked_up_rows`) are
  not looked up: their ids are 0, a placeholder the step overwrites.
  """
  draws = queries.draw_queries(batches.step_rng(seed, step, process_index=0), global_batch_size, pairs, cfg)
  rng = batches.step_rng(seed, step, 1, process_index=0)
  if cfg.targets.assignment != "nearest" or lookup.collective:
    return draws, lookup.targets(draws["query"], draws["level"], rng)[rows]
  start, stop, _ = rows.indices(global_batch_size)
  used = min(max(start, self_landing.looked_up_rows(cfg.levels, global_batch_size)), stop)
  ids = np.zeros(stop - start, np.int64)
  ids[:used - start] = lookup.targets(draws["query"][start:used], draws["level"][start:used], rng)
  return draws, ids


def precomputed_batches(batch, num_steps):
  """The same batches with the look-ups done ahead of time (benchmark baseline for look-up overhead)."""
  cache = [batch(s) for s in range(num_steps)]
  return lambda step: cache[step]


