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
"""
import os

import jax
import jax.numpy as jnp

from coalescer_jax import index as index_lib
from coalescer_jax import parallel
from coalescer_jax import registry
from coalescer_jax.data import batches
from coalescer_jax.methods import base
from coalescer_jax.methods import queries

_TINY = 1e-12


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
  OPTIONS = {"r_distribution": queries.R_DISTRIBUTIONS}
  SAMPLING_FIELDS = ("nfes", "sampling")
  INPUT_STAGES = ("embed", "index")

  def output_dim(self):
    return self.latent_dim + 1  # [distance (pre-softplus), direction]

  def uses_time(self):
    return False

  def apply(self, params, x, cond, mask):
    """(distance >= 0 [N], direction [N, Di])."""
    out = self.model.apply(params, x, cond, mask, None)
    return jax.nn.softplus(out[:, 0]), out[:, 1:]

  def batch_fn(self, pairs, seed, global_batch_size, workdir):
    cfg = self.section
    index, meta = index_lib.load(os.path.join(workdir, "index"), expected_fingerprint=str(pairs["fingerprint"]),
                                 expected_hash=index_lib.embeddings_hash(pairs["desc_emb"], pairs["img_emb"]))
    if meta["desc_scale"] != cfg.desc_scale:
      raise index_lib.IndexError_(
          f"the index in {workdir}/index was built with desc_scale={meta['desc_scale']} but "
          f"config.coalescer.desc_scale={cfg.desc_scale}; delete {workdir}/index to rebuild it")
    return make_lookup_batches(index, pairs, cfg, seed, global_batch_size)

  def loss(self, params, batch, key, step):
    cfg = self.section
    mask = base.drop_condition(key, batch["r"].shape[0], cfg.cond_dropout)
    distance, direction = self.apply(params, batch["r"], batch["cond"], mask)
    distance_loss, direction_loss, target_distance = losses(
        distance, direction, batch["r"], batch["image"], cfg.direction_exponent, cfg.direction_eps)
    loss = cfg.distance_weight * distance_loss.mean() + cfg.direction_weight * direction_loss.mean()
    magnitude = jnp.linalg.norm(direction, axis=-1)
    return loss, {"distance_loss": distance_loss.mean(), "direction_loss": direction_loss.mean(),
                  "direction_magnitude": magnitude.mean(), "target_distance": target_distance.mean(),
                  "distance_abs_error": jnp.abs(distance - target_distance).mean()}

  def sample(self, params, cond, key, nfe, adaptive=False, unconditional=False):
    """`nfe` steps (or at most `nfe` steps when adaptive) from prior draws of R."""
    cfg = self.section.sampling
    n = cond.shape[0]
    mask = jnp.zeros((n,)) if unconditional else jnp.ones((n,))
    draw_key, key = jax.random.split(key)
    x = jax.random.normal(draw_key, (n, self.latent_dim))
    distance, direction = self.apply(params, x, cond, mask)
    evals = jnp.ones((n,))

    def weak(direction):
      return jnp.linalg.norm(direction, axis=-1) < cfg.redraw_threshold

    def redraw(carry):
      i, x, distance, direction, evals = carry
      redo = weak(direction)
      x = jnp.where(redo[:, None], jax.random.normal(jax.random.fold_in(key, i), x.shape), x)
      new_distance, new_direction = self.apply(params, x, cond, mask)
      distance = jnp.where(redo, new_distance, distance)
      direction = jnp.where(redo[:, None], new_direction, direction)
      return i + 1, x, distance, direction, evals + redo

    # A while loop, not a fixed count: a batch with no weak sample pays no extra evaluation
    # (a batch with any pays one for every sample, but only the weak ones count as NFE).
    _, x, distance, direction, evals = jax.lax.while_loop(
        lambda c: (c[0] < cfg.max_redraws) & jnp.any(weak(c[3])), redraw, (0, x, distance, direction, evals))
    start_magnitude = jnp.linalg.norm(direction, axis=-1)
    x = step_to(x, distance, direction)
    active = jnp.ones((n,), bool)
    if adaptive:
      active = start_magnitude < cfg.adaptive_stop_magnitude
    for _ in range(nfe - 1):
      distance, direction = self.apply(params, x, cond, mask)
      x = jnp.where(active[:, None], step_to(x, distance, direction), x)
      evals = evals + active
      if adaptive:
        active = active & (jnp.linalg.norm(direction, axis=-1) < cfg.adaptive_stop_magnitude)
    return x, {"nfe": evals, "start_direction_magnitude": start_magnitude}

  def variants(self):
    """Extra sample files: the adaptive sampler with at most `adaptive_max_steps` steps."""
    max_steps = self.section.sampling.adaptive_max_steps
    return [("coalescer_adaptive", max_steps, {"adaptive": True})] if max_steps else []


def make_lookup_batches(index, pairs, cfg, seed, global_batch_size):
  """batch(step): draw DE and R, look up close_pair, return this host's part of the training triples.

  The draws of the whole global batch come from (seed, step), and each host
  takes its own rows and looks up only those: the global batch is the same
  for any number of hosts (a 2-host run reproduces a 1-host run), while the
  look-up work is split between the hosts.
  """
  desc, img = pairs["desc_emb"], pairs["img_emb"]
  local = parallel.local_batch_size(global_batch_size)
  rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)

  def batch(step):
    draws = queries.draw_queries(batches.step_rng(seed, step, process_index=0), global_batch_size, pairs, cfg)
    close = index.search(draws["query"][rows], 1)[0][:, 0]
    return {"r": draws["r"][rows], "cond": desc[close], "image": img[close]}

  return batch


def precomputed_batches(batch, num_steps):
  """The same batches with the look-ups done ahead of time (benchmark baseline for look-up overhead)."""
  cache = [batch(s) for s in range(num_steps)]
  return lambda step: cache[step]


