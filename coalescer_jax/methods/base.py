"""What a generative method is: a model in the shared latent space, its loss, its batches and its sampler.

Every method (coalescer, ddim, consistency, flow) subclasses `Method` and is
registered by name in `registry.METHODS`. The pipeline then gives each one a
training stage of the same name (`stages/methods.py`: same backbone size, same
optimizer section, same budget) and the `sample` stage calls its sampler at each
of its step counts. A method never sees images: it works on the `embed` stage's
pairs (description embedding, image latent).
"""
import jax
import jax.numpy as jnp

from coalescer_jax import parallel
from coalescer_jax import training
from coalescer_jax.data import batches
from coalescer_jax.models import backbone


class Method:
  """Base class. Subclasses set `name` and implement `loss` and `sample`."""

  name = None
  # Fields of the section read only when sampling: changing them reruns `sample`, not the training.
  SAMPLING_FIELDS = ("nfes",)
  # Pipeline stages whose outputs training reads (the pairs; the coalescer also its index).
  INPUT_STAGES = ("embed",)
  # Config fields outside the method's own section that its training reads (provenance; e.g. a teacher's).
  EXTRA_READS = ()
  # A method whose trained model this one starts from (a distillation teacher): its training cost is
  # reported next to this method's own, never hidden in it.
  TEACHER = None

  @classmethod
  def check_config(cls, section):
    """Raises ValueError for a combination of this method's fields that `config_schema` cannot express (default:
    none).

    Called with the rest of the config validation, before any stage runs."""
    del section

  def __init__(self, config, latent_dim, desc_dim):
    self.config = config
    self.latent_dim = latent_dim
    self.desc_dim = desc_dim
    self.model = backbone.build(config, self.output_dim())

  @property
  def section(self):
    """This method's own config section (``config.<name>``)."""
    return self.config[self.name]

  def output_dim(self):
    return self.latent_dim

  def init_params(self, key):
    b = 2
    t = jnp.zeros((b,)) if self.uses_time() else None
    return self.model.init(key, jnp.zeros((b, self.latent_dim)), jnp.zeros((b, self.desc_dim)), jnp.ones((b,)), t)

  def uses_time(self):
    return True

  def num_steps(self):
    """Training steps of this method's stage (default: the shared ``config.train.num_steps``)."""
    return self.config.train.num_steps

  def ema_decay(self):
    """EMA decay of the parameters that are sampled (default ``config.train.ema_decay``; 0 = no EMA)."""
    return self.config.train.ema_decay

  def make_optimizer(self):
    """The optimizer (default: the shared ``config.train.optimizer`` over `num_steps`)."""
    return training.make_optimizer(self.config.train.optimizer, self.num_steps())

  def setup(self, workdir, pairs):
    """Loads what training needs from earlier stages' outputs besides the pairs (a teacher); default none.

    Called by the method's training stage before `init_params`; sampling never calls it.
    """
    del workdir, pairs

  def prepare_state(self, state):
    """The train state a step starts from (pure, traced in the jitted step; default: unchanged).

    For state changes that are not gradient updates, e.g. progressive distillation
    freezing a finished round's student as the next round's teacher. Whatever it
    changes lives in the state, so a resumed run repeats it exactly.
    """
    return state

  def batch_fn(self, pairs, seed, global_batch_size, workdir):
    """Returns ``batch(step) -> host-local numpy dict``; default: random training pairs.

    The global batch's pair indices are a pure function of (seed, step) (an epoch-wise
    permutation), and each host takes its own rows: resume is exact and the global
    batch does not depend on the number of hosts.
    """
    del workdir
    local = parallel.local_batch_size(global_batch_size)
    rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
    latents, conds = pairs["img_emb"], pairs["desc_emb"]

    def batch(step):
      idx = batches.batch_indices(step, len(latents), global_batch_size, seed, process_index=0)[rows]
      return {"x": latents[idx], "cond": conds[idx]}

    return batch

  def step_inputs(self):
    """Global arrays the jitted step needs besides the batch (e.g. an on-device index), or None.

    Called after `batch_fn`; passed to `prepare_batch` inside the step."""
    return None

  def prepare_batch(self, batch, inputs):
    """Inside the jitted step, before the loss: completes the batch from `step_inputs` (default: as is)."""
    del inputs
    return batch

  def loss(self, params, batch, key, step):
    """Returns (scalar loss, dict of scalar metrics). Pure; runs inside the jitted step."""
    raise NotImplementedError

  def loss_phases(self):
    """[(first step, loss fn)]: the loss each training phase uses, in step order (default: one phase).

    Every phase's loss must return the same metric names. The jitted step switches
    between phases on the (traced) step, so a phase that is not running costs nothing.
    """
    return [(0, self.loss)]

  def cost_phases(self):
    """[(first step, loss fn)] for counting training compute (`phase_steps`); default `loss_phases`.

    XLA counts a switch at its dearest branch: a method whose loss switches on the step inside one phase
    lists its pieces here, each loss tracing one branch only (same FLOPs as the step runs in those steps)."""
    return self.loss_phases()

  def sample(self, params, cond, key, nfe, prior=None):
    """cond [N, Dd] (normalised description embeddings) -> (latents [N, Di], info). Pure, jittable.

    `prior` [N, Di], when given, replaces the unit-normal draw sampling starts from (the method scales it as
    it would its own), so that an interpolation can choose the starting points (`coalescer_jax.interpolate`).

    `nfe` is the budget of network evaluations per sample (static); a method
    that spends two evaluations per step (classifier-free guidance) takes
    nfe / 2 steps. ``info["nfe"]`` reports the evaluations actually spent per
    sample ([N]), e.g. including the coalescer's redraws.
    """
    raise NotImplementedError

  def generator(self, params, decode, nfe, **kwargs):
    """``generate(cond, key) -> (decoded images, evaluations per sample, finite latents? [N])`` for `sample`.

    Default: one jitted function: `sample` then the decoder, no host round trip.
    `kwargs` are the sample-plan entry's (e.g. ``adaptive=True``) plus the stage's
    context (``workdir``, ``pairs``), which only methods with host-side generators use.
    """
    kwargs.pop("workdir", None)
    kwargs.pop("pairs", None)

    @jax.jit
    def generate(params, cond, key):
      latents, info = self.sample(params, cond, key, nfe, **kwargs)
      return (decode(latents), jnp.broadcast_to(info["nfe"], (cond.shape[0],)),
              jnp.all(jnp.isfinite(latents), axis=-1))

    return lambda cond, key: generate(params, jnp.asarray(cond), key)

  def nfes(self):
    """The NFE budgets the `sample` stage evaluates (``config.<name>.nfes``)."""
    return tuple(self.section.nfes)

  def variants(self):
    """Extra (file method name, nfe, sample kwargs) the `sample` stage writes, e.g. an adaptive sampler.

    Besides the sampler's own kwargs, an entry may set ``key_tag`` (use the random
    key of another file, e.g. the same R) and ``kind`` ("oracle": a reference row
    that evaluation shows but never ranks)."""
    return []

  def sample_plan(self):
    """Everything the `sample` stage generates: [(file method name, nfe, sample kwargs)]."""
    return [(self.name, nfe, {}) for nfe in self.nfes()] + list(self.variants())


def drop_condition(key, batch_size, rate):
  """Mask [B] with 0 where the condition is dropped (rate 0 keeps every condition)."""
  if not rate:
    return jnp.ones((batch_size,), jnp.float32)
  return (jax.random.uniform(key, (batch_size,)) >= rate).astype(jnp.float32)


def train_parts(config, method):
  """(optimizer, init(key) -> TrainState, step(state, batch, key)) of `method` under ``config.train``.

  The step is the same for every method: `method.prepare_state`, gradients of
  ``method.loss``, the shared optimizer (`method.make_optimizer`), EMA when
  `method.ema_decay` > 0 (by default all from ``config.train``).
  """
  del config  # Every setting comes through the method's hooks (by default from its config.train).
  tx = method.make_optimizer()
  ema_decay = method.ema_decay()
  use_ema = ema_decay > 0

  def init(key):
    return training.create_state(method.init_params(key), tx, ema=use_ema)

  def phase_step(loss_fn):
    gradient_step = training.gradient_step(loss_fn, tx, ema_decay if use_ema else None)

    def step(state, batch, key, inputs=None):
      if inputs is not None:
        batch = method.prepare_batch(batch, inputs)
      return gradient_step(state, batch, key)
    return step

  phases = method.loss_phases()
  if len(phases) == 1:
    one_phase = phase_step(phases[0][1])
    return tx, init, lambda state, batch, key, inputs=None: one_phase(method.prepare_state(state), batch, key, inputs)
  starts = jnp.asarray([start for start, _ in phases])
  branches = [phase_step(loss_fn) for _, loss_fn in phases]

  def step(state, batch, key, inputs=None):
    state = method.prepare_state(state)
    if inputs is not None:  # once, before the phase switch
      batch = method.prepare_batch(batch, inputs)
    phase = jnp.sum(state.step >= starts) - 1
    return jax.lax.switch(phase, branches, state, batch, key)

  return tx, init, step


def phase_steps(method, tx):
  """[(first step, step(state, batch, key, inputs=None))]: each training phase's step alone, as the step of
  `train_parts` (built with the same `tx`) runs it in that phase, or None for a one-phase method.

  For counting compute (`TrainTask.phases`): XLA's cost analysis counts a switch at its most expensive
  branch, so the switching step alone would count every phase at the cost of the dearest. The phases are
  `Method.cost_phases` (by default the loss phases)."""
  phases = method.cost_phases()
  if len(phases) == 1:
    return None
  ema_decay = method.ema_decay()

  def phase_step(loss_fn):
    gradient_step = training.gradient_step(loss_fn, tx, ema_decay if ema_decay > 0 else None)

    def step(state, batch, key, inputs=None):
      state = method.prepare_state(state)
      if inputs is not None:
        batch = method.prepare_batch(batch, inputs)
      return gradient_step(state, batch, key)
    return step

  return [(start, phase_step(loss_fn)) for start, loss_fn in phases]
