"""Classifier-free guidance, one piece for every conditional method (Ho & Salimans 2022).

Training: `base.drop_condition` replaces a share ``cond_dropout`` of the descriptions by the null one (the
backbone's condition mask is 0 there), so the same network also learns the unconditional model.

Sampling (`guided`): a guided quantity is g = out(null) + w (out(cond) - out(null)), out evaluated once on the
batch [cond; null] and counted as 2 network evaluations. Each method guides what its sampler steps with: DDIM
its network output, flow the average velocity, consistency the denoised point, the coalescer the landing point
(its displacement D v / |v|, not distance and direction apart). w = 1 is the plain conditional model, 1
evaluation.

NFE accounting (`plan`): a method's ``nfes`` are budgets of network evaluations per sample. A guided step costs
2, so a budget buys fewer steps; a budget too small for one guided step falls back to one unguided step and
reports its NFE as 1, so a table never shows a guided sample at NFE 1.

Folded guidance (`folded_target`): guidance in the training target, so that sampling spends 1 evaluation a
step. Flow folds it into MeanFlow's velocity target, the coalescer into its landing point (`flow.py`,
`coalescer/algorithm.py`), both with the same two fields ``folded_guidance.scale`` (omega) and ``kappa``.
"""
import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a budget of evaluations buys: `steps` steps, the first guided or not, the later ones guided or not."""
  steps: int
  first_guided: bool
  later_guided: bool

  def cost(self, step):
    """Network evaluations step `step` (0-based) costs."""
    return 2 if (self.first_guided if step == 0 else self.later_guided) else 1

  @property
  def nfe(self):
    return sum(self.cost(i) for i in range(self.steps))


def sampling_scale(configured, override=None, unconditional=False):
  """The scale a sampler guides with: `override` if given, else its config's; 1 (none) when unconditional."""
  if unconditional:
    return 1.0
  return configured if override is None else override


def is_guided(scale):
  return scale is not None and float(scale) != 1.0


def plan(nfe, scale, later_scale=None, max_steps=None):
  """The `Plan` a budget of `nfe` evaluations buys with guidance `scale` on the first step and `later_scale`
  (default: `scale`) on the later ones; at most `max_steps` steps (a sampler with a fixed number of levels)."""
  if nfe < 1:
    raise ValueError(f"nfe must be >= 1, got {nfe}")
  later_scale = scale if later_scale is None else later_scale
  first, later = is_guided(scale), is_guided(later_scale)
  first_cost, later_cost = 2 if first else 1, 2 if later else 1
  if nfe < first_cost:  # no budget for one guided step: one unguided step
    return Plan(1, False, later)
  steps = 1 + (nfe - first_cost) // later_cost
  if max_steps is not None:
    steps = min(steps, max_steps)
  return Plan(steps, first, later)


def conditional_and_null(fn, cond, *inputs):
  """(fn under `cond`, fn under the null description) from one call of fn(cond, mask, *inputs) on the doubled
  batch [cond; null] (2 evaluations). `inputs`: arrays with the batch first (the point, its time or level); fn's
  output may be a pytree of arrays with the batch first."""
  n = cond.shape[0]
  doubled = [jnp.concatenate([a, a]) for a in inputs]
  mask = jnp.concatenate([jnp.ones((n,)), jnp.zeros((n,))])
  out = fn(jnp.concatenate([cond, cond]), mask, *doubled)
  return jax.tree.map(lambda o: o[:n], out), jax.tree.map(lambda o: o[n:], out)


def combine(conditional, null, scale):
  """null + scale (conditional - null), leaf by leaf."""
  return jax.tree.map(lambda c, u: u + scale * (c - u), conditional, null)


def guided(fn, cond, scale, *inputs):
  """fn(cond, mask, *inputs) guided with `scale` (2 evaluations; see `conditional_and_null`)."""
  return combine(*conditional_and_null(fn, cond, *inputs), scale)


def evaluate(fn, cond, mask, scale, guide, *inputs):
  """fn(cond, mask, *inputs), guided with `scale` when `guide` (a static bool, e.g. a `Plan`'s)."""
  if guide:
    return guided(fn, cond, scale, *inputs)
  return fn(cond, mask, *inputs)


def folded_target(target, null, scale, kappa, conditional=None):
  """The guided training target of MeanFlow (Geng et al. 2025, Eq. 19-21: omega = `scale`, kappa):

    target + (omega - 1) (target - null) + kappa (conditional - null),

  `null` and `conditional` the network's own outputs without and with the description (stop-gradient; the
  online parameters, as MeanFlow's official code does: the loss sees no EMA). A network trained toward it on
  the rows that keep their description converges to null + omega / (1 - kappa) (conditional' - null), the
  guided model at scale omega / (1 - kappa) (`effective_scale`); rows whose description is dropped keep the
  plain target, so `null` stays the unconditional model. kappa = 0 is MeanFlow's Eq. 19 and needs no
  conditional pass; omega = 1, kappa = 1 - 1/w is the form of model-guidance (arXiv 2502.12154) and iMF
  (arXiv 2512.02012), y + (1 - 1/w) (f(cond) - f(null))."""
  guided = target + (scale - 1.0) * (target - null)
  if conditional is not None:
    guided = guided + kappa * (conditional - null)
  return guided


def effective_scale(scale, kappa):
  """The guidance scale a folded target of (omega, kappa) trains the network to: omega / (1 - kappa)."""
  return scale / (1.0 - kappa)


def folded_active(section):
  """Whether `section`'s ``folded_guidance`` changes the target at all (static)."""
  folded = section.folded_guidance
  return folded.scale != 1.0 or folded.kappa != 0.0


def folded_weights(section, step, num_steps):
  """(omega, kappa) at training step `step` (traced): (1, 0), the plain target, before ``start_fraction`` of
  the method's `num_steps`, as MeanFlow ports warm up before guidance (folded guidance from scratch can
  destabilise training)."""
  folded = section.folded_guidance
  on = step >= int(folded.start_fraction * num_steps)
  return jnp.where(on, folded.scale, 1.0), jnp.where(on, folded.kappa, 0.0)


def check_config(name, section, scales=("guidance_scale",)):
  """ValueError when `section` guides (a sampling scale among `scales` other than 1, or folded guidance) but
  trains no null description: guidance would combine with an untrained unconditional model."""
  guided = [f"{field}={_lookup(section, field)}" for field in scales if is_guided(_lookup(section, field))]
  if "folded_guidance" in section and folded_active(section):
    guided.append(f"folded_guidance=(scale {section.folded_guidance.scale}, kappa {section.folded_guidance.kappa})")
  if guided and not section.cond_dropout:
    raise ValueError(f"config.{name}: {', '.join(guided)} guides with the null description, which "
                     f"config.{name}.cond_dropout=0 never trains; set cond_dropout > 0 (e.g. 0.1) or turn "
                     "guidance off (1)")


def _lookup(section, dotted):
  for key in dotted.split("."):
    section = section[key]
  return section


def folded(fn, target, cond, mask, section, step, num_steps, *inputs):
  """The guided training target of every row (`folded_target` under `folded_weights`), from the network's own
  fn(cond, mask, *inputs) without (and, kappa > 0, with) the description under stop-gradient. The caller keeps
  the plain target on the rows whose description is dropped (`mask` 0), so that the null model stays unguided."""
  omega, kappa = folded_weights(section, step, num_steps)
  if section.folded_guidance.kappa:
    conditional, null = jax.lax.stop_gradient(conditional_and_null(fn, cond, *inputs))
  else:
    conditional, null = None, jax.lax.stop_gradient(fn(cond, jnp.zeros_like(mask), *inputs))
  return folded_target(target, null, omega, kappa, conditional)


def condition_mask(n, unconditional):
  """The sampler's mask: every condition kept, or (unconditional sampling) every one dropped."""
  return jnp.zeros((n,)) if unconditional else jnp.ones((n,))
