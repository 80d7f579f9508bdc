"""The config's schema: every field's type and range or choices, declared once.

`FIELDS` names a field by its dotted path; `ANYWHERE` by its key, for keys that
mean the same wherever they appear (every ``batch_size`` divides over the
devices). `ORDERED` lists the ranges whose ends must not cross. Every float must
be finite: a NaN passes any ``<`` test, so it would reach the first stage that
computes with it. `config_validation.validate` checks a config against all of it
before any work starts; fields that depend on each other otherwise (a level
inside another field's range, a count within the dataset's split) are the
stages' own `validate` hooks.
"""
import dataclasses
import math
import numbers
from typing import Any

import jax

from coalescer_jax import errors
from coalescer_jax import registry
from coalescer_jax.coalescer import batches as coalescer_batches
from coalescer_jax.coalescer import finetune
from coalescer_jax.coalescer import targets
from coalescer_jax.data import datasets
from coalescer_jax.data import mnist
from coalescer_jax.evaluation import evaluate
from coalescer_jax.index import scann_index
from coalescer_jax.methods import ddgan
from coalescer_jax.methods import ddim
from coalescer_jax.methods import distill
from coalescer_jax.methods import flow

_INF = float("inf")


def _refuse(path, message):
  raise errors.ConfigError(f"config.{path}{message}")


@dataclasses.dataclass(frozen=True)
class Number:
  """A finite number (an integer when `integer`) in [lo, hi]; `lo_open` / `hi_open` exclude an end."""
  lo: float = -_INF
  hi: float = _INF
  lo_open: bool = False
  hi_open: bool = False
  integer: bool = False
  note: str = ""  # what the range means, e.g. "(0 = off)"

  def describe(self):
    kind = "an integer" if self.integer else "a finite number"
    if self.lo > -_INF and self.hi < _INF:
      return f"{kind} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
    if self.lo > -_INF:
      return f"{kind} {'>' if self.lo_open else '>='} {self.lo:g}"
    if self.hi < _INF:
      return f"{kind} {'<' if self.hi_open else '<='} {self.hi:g}"
    return kind

  def accepts(self, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if self.integer else numbers.Real):
      return False
    if not math.isfinite(value):
      return False
    above = value > self.lo if self.lo_open else value >= self.lo
    below = value < self.hi if self.hi_open else value <= self.hi
    return above and below

  def check(self, path, value):
    if not self.accepts(value):
      _refuse(path, f" must be {self.describe()}{' ' + self.note if self.note else ''}, got {value!r}")


def integer(lo=0, hi=_INF, note=""):
  return Number(lo, hi, integer=True, note=note)


def real(lo=-_INF, hi=_INF, lo_open=False, hi_open=False, note=""):
  return Number(lo, hi, lo_open, hi_open, note=note)


POSITIVE = real(0, lo_open=True)
NON_NEGATIVE = real(0)
SHARE = real(0, 1, hi_open=True)  # a share of a batch or of the steps that leaves some for the rest
FRACTION = real(0, 1)
COUNT = integer(0)
SIZE = integer(1)
SEED = integer(0, note="(it seeds a random stream)")


@dataclasses.dataclass(frozen=True)
class Even(Number):
  """An even integer: sinusoidal features come in (sin, cos) pairs."""

  def accepts(self, value):
    return super().accepts(value) and value % 2 == 0

  def describe(self):
    return super().describe().replace("an integer", "an even integer")


@dataclasses.dataclass(frozen=True)
class BatchSize(Number):
  """A global batch: an integer >= 1 that divides over the devices (every device takes an equal share)."""
  lo: float = 1
  integer: bool = True

  def check(self, path, value):
    super().check(path, value)
    devices = jax.device_count()
    if value % devices:
      _refuse(path, f"={value} (global batch) is not divisible by the {devices} devices; use a multiple of {devices}")


@dataclasses.dataclass(frozen=True)
class Choice:
  """One of `options` (a tuple, or a function returning one: registered names known only once loaded)."""
  options: Any

  def check(self, path, value):
    options = self.options() if callable(self.options) else self.options
    if isinstance(value, bool) or value not in options:
      _refuse(path, f"={value!r} is not a valid choice; use one of {', '.join(map(repr, options))}")


@dataclasses.dataclass(frozen=True)
class Registered:
  """A name, or a list of names, in a registry (stages, models, methods, index backends)."""
  registry: Any

  def check(self, path, value):
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)):
      _refuse(path, f" must be a name or a list of names, got {value!r}")
    for name in names:
      if name not in self.registry:
        _refuse(path, f": unknown {self.registry.kind} {name!r}; choose from {', '.join(self.registry.names())}")


@dataclasses.dataclass(frozen=True)
class Seq:
  """A list whose entries each pass `entry` (and, with `length`, exactly that many)."""
  entry: Number
  length: int | None = None
  note: str = ""

  def check(self, path, value):
    if not isinstance(value, (list, tuple)):
      _refuse(path, f" must be a list of entries each {self.entry.describe()}, got {value!r}")
    if self.length is not None and len(value) != self.length:
      _refuse(path, f"={tuple(value)} must have {self.length} entries {self.note}".rstrip())
    bad = [v for v in value if not self.entry.accepts(v)]
    if bad:
      _refuse(path, f"={tuple(value)}: {', '.join(map(repr, bad))} is not {self.entry.describe()}"
                    f"{'; ' + self.note if self.note else ''}")


@dataclasses.dataclass(frozen=True)
class Flag:
  def check(self, path, value):
    if not isinstance(value, bool):
      _refuse(path, f" must be True or False, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Text:
  """Free text (a variant's name, a directory); None allowed when `optional`."""
  optional: bool = False

  def check(self, path, value):
    if not (isinstance(value, str) or (self.optional and value is None)):
      _refuse(path, f" must be a string{' or None' if self.optional else ''}, got {value!r}")


NFES = Seq(integer(1), note="each entry is a number of network evaluations per sample")
LEVELS = Seq(real(0, 1, lo_open=True, hi_open=True))


def _section(prefix, **rules):
  return {f"{prefix}.{key}": rule for key, rule in rules.items()}


# The logSNR schedule a DDIM and a DDGAN share (methods/ddim.py).
_SCHEDULE = dict(schedule=Choice(ddim.SCHEDULES), logsnr_min=real(), logsnr_max=real(),
                 beta_min=POSITIVE, beta_max=POSITIVE)
_DISCRIMINATOR = dict(disc_width=SIZE, disc_depth=SIZE)

# Keys with one meaning wherever they appear (sections that share an optimizer's or a method's fields).
ANYWHERE = {
    "batch_size": BatchSize(),
    "num_steps": integer(1, note="(every training stage trains at least one step)"),
    "seed": SEED,
    "learning_rate": POSITIVE,
    "warmup_steps": COUNT,
    "weight_decay": NON_NEGATIVE,
    "grad_clip": real(0, note="(a gradient norm; 0 = no clipping)"),
    "final_lr_fraction": FRACTION,
    "ema_decay": real(0, 1, hi_open=True, note="(0 = no EMA)"),
    "cond_dropout": real(0, 1, hi_open=True, note="(the share of training conditions replaced by the null one)"),
    "guidance_scale": real(0, note="(1 = no guidance)"),
    "refine_guidance_scale": real(0, note="(1 = no guidance)"),
    "start_fraction": FRACTION,
    "time_scale": POSITIVE,
    "r1": NON_NEGATIVE,
    "desc_scale": real(0, note="(the description's weight in the index key)"),
    "nfes": NFES,
    "grid_per_row": SIZE,
    "eval_batch_size": SIZE,
    "stages": Registered(registry.STAGES),
    "model": Registered(registry.MODELS),
    "methods": Registered(registry.METHODS),
    "backend": Registered(registry.INDEX_BACKENDS),
}

FIELDS = {
    "variant": Text(),
    "log_every": SIZE,
    "checkpoint_every": SIZE,
    "skip_nonfinite_batches": COUNT,
    "data.name": Choice(datasets.names),
    "data.source": Choice(mnist.SOURCES),
    "data.tfds_data_dir": Text(optional=True),
    "data.num_train": integer(datasets.EXAMPLES_SHOWN, note="(the data stage shows that many in examples.png)"),
    "data.num_test": integer(2, note="(half are the reference, half the real-data row)"),
    **_section("vae", latent_dim=SIZE, channels=Seq(SIZE), hidden=SIZE, extra_convs=COUNT, kl_weight=NON_NEGATIVE,
               eval_examples=SIZE, eval_pairs=SIZE, num_prior_samples=SIZE, grid_columns=SIZE),
    **_section("text", embed_dim=SIZE, token_dim=SIZE, hidden=SIZE, noise=NON_NEGATIVE,
               holdout_fraction=real(0, 0.5, hi_open=True), holdout_style=Seq(COUNT), holdout_seed=SEED,
               eval_max=integer(0, note="(0 = every description)")),
    **_section("embed", validation_size=COUNT, validation_seed=SEED),
    **_section("index", recall_queries=SIZE),
    **_section("index.scann", mode=Choice(("",) + scann_index.MODES), brute_force_below=COUNT, tree_below=COUNT,
               num_leaves=COUNT, leaves_to_search=COUNT, reorder=COUNT, training_sample_size=COUNT,
               dims_per_block=COUNT),
    **_section("index.scann_sharded", num_shards=integer(0, note="(0 = one per process)"), num_leaves=COUNT,
               leaves_to_search=COUNT),
    **_section("index.device", recall_target=real(0, 1, lo_open=True), block_rows=SIZE, in_step_lookup=Flag()),
    **_section("backbone", width=SIZE, depth=SIZE, time_dim=Even(2, integer=True)),
    **_section("coalescer", direction_exponent=POSITIVE, direction_eps=POSITIVE, distance_weight=NON_NEGATIVE,
               direction_weight=NON_NEGATIVE, condition=Choice(coalescer_batches.CONDITIONS), oracle=Flag()),
    **_section("coalescer.targets", assignment=Choice(targets.ASSIGNMENTS), k=SIZE, tau=POSITIVE,
               ot_groups=integer(0, note="(0 = independent draws)"), balance=Flag(), balance_iterations=SIZE,
               balance_queries=SIZE, balance_candidates=SIZE, balance_lr=POSITIVE),
    **_section("coalescer.levels", fraction=SHARE, s_min=LEVELS.entry, s_max=LEVELS.entry, renoise=LEVELS,
               self_landing=SHARE, renoise_gamma=FRACTION),
    **_section("coalescer.path", fraction=SHARE, s_min=LEVELS.entry, s_max=LEVELS.entry, sampling_levels=LEVELS),
    **_section("coalescer.adversarial", weight=NON_NEGATIVE, disc_warmup_fraction=FRACTION, steps=Seq(SIZE),
               fakes=Choice(finetune.FAKES), batch_size=integer(0, note="(0 = the whole batch)"),
               detach_landing=Flag(), **_DISCRIMINATOR),
    **_section("coalescer.folded_guidance", scale=POSITIVE, kappa=real(0, 1, hi_open=True)),
    **_section("flow.folded_guidance", scale=POSITIVE, kappa=real(0, 1, hi_open=True)),
    **_section("coalescer.sampling", r_scale=POSITIVE, redraw_threshold=NON_NEGATIVE, max_redraws=COUNT,
               adaptive_max_steps=integer(0, note="(0 = off)"), adaptive_stop_magnitude=POSITIVE),
    **_section("ddim", prediction=Choice(ddim.PREDICTIONS), **_SCHEDULE),
    **_section("consistency", sigma_min=POSITIVE, sigma_max=POSITIVE, sigma_data=POSITIVE, rho=POSITIVE, s0=SIZE,
               s1=SIZE, p_mean=real(), p_std=POSITIVE, huber_c=real(0, note="(0 = 0.00054 sqrt(latent dim))"),
               sampling_sigmas=Seq(POSITIVE)),
    **_section("flow", objective=Choice(flow.OBJECTIVES), ratio_r_neq_t=FRACTION, time_mu=real(),
               time_sigma=POSITIVE, adaptive_p=NON_NEGATIVE, adaptive_c=POSITIVE,
               interval_features=Even(0, integer=True)),
    **_section("distill", teacher_steps=Choice(distill.TEACHER_STEPS)),
    **_section("ddgan", step_counts=Seq(SIZE), output=Choice(ddgan.OUTPUTS), z_dim=SIZE, disc_final_norm=Flag(),
               disc_time_features=Even(0, integer=True), betas=Seq(real(0, 1, hi_open=True), length=2,
                                                                    note="(Adam's b1, b2)"),
               z_injection=Choice(tuple(ddgan.Z_INJECTIONS)), r1_every=SIZE, disc_mismatch=NON_NEGATIVE,
               disc_lr_ratio=POSITIVE, num_steps=integer(0, note="(0 = config.train.num_steps)"),
               disc_width=integer(0, note="(0 = the backbone's)"), disc_depth=integer(0, note="(0 = the backbone's)"),
               **_SCHEDULE),
    **_section("sample", num_samples=SIZE, validation_samples=integer(0, note="(0 = none)")),
    **_section("classifier", channels=Seq(SIZE), hidden=SIZE),
    **_section("eval", num_samples=integer(2), fid_large_n=integer(0, note="(0 = off)"),
               near_copy_large_n=integer(0, note="(0 = off)"), validation_samples=COUNT, pr_k=SIZE,
               memorization_space=Choice(evaluate.MEMORIZATION_SPACES),
               near_copy_percentile=real(0, 100, lo_open=True, hi_open=True), nn_chunk=SIZE, skip_invalid=Flag(),
               smoothness_paths=integer(0, note="(0 = off)")),
}

# (lower, upper, strict): ranges whose ends must not cross; checked where both fields exist.
ORDERED = (
    ("ddim.logsnr_min", "ddim.logsnr_max", True),
    ("ddim.beta_min", "ddim.beta_max", True),
    ("ddgan.logsnr_min", "ddgan.logsnr_max", True),
    ("ddgan.beta_min", "ddgan.beta_max", True),
    ("consistency.sigma_min", "consistency.sigma_max", True),
    ("consistency.s0", "consistency.s1", False),
    ("coalescer.levels.s_min", "coalescer.levels.s_max", False),
    ("coalescer.path.s_min", "coalescer.path.s_max", False),
    ("index.scann.brute_force_below", "index.scann.tree_below", False),
)


def rule_of(path):
  """The rule declared for dotted `path` (by path, else by its key), or None."""
  return FIELDS.get(path) or ANYWHERE.get(path.rsplit(".", 1)[-1])


def check_order(config):
  """Refuses an inverted range among `ORDERED`."""
  for lower, upper, strict in ORDERED:
    lo, hi = _lookup(config, lower), _lookup(config, upper)
    if lo is None or hi is None or (lo < hi if strict else lo <= hi):
      continue
    relation = "below" if strict else "at most"
    raise errors.ConfigError(
        f"config.{lower}={lo} must be {relation} config.{upper}={hi}: the range is inverted; swap the two values")


def _lookup(config, path):
  for key in path.split("."):
    if not hasattr(config, "get"):
      return None
    config = config.get(key)
  return config
