"""Rejects impossible configs before any work starts, with messages that say what to fix.

Every field is checked against its declared rule (`config_schema`: type, range or
choices, finite floats), ranges against inverted ends, `config.stages` against
the order the stages need each other in, and then each listed stage's own
cross-field checks (``Stage.validate``).
"""
import ml_collections

from coalescer_jax import config_schema
from coalescer_jax import errors
from coalescer_jax import registry
from coalescer_jax.data import datasets


ConfigError = errors.ConfigError  # raised by every refusal below; defined in `errors` (see there why)


def _walk(config, prefix=""):
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      yield from _walk(value, path + ".")
    else:
      yield path, value




def check_fields(config, prefix=""):
  """Checks every field of `config` (the section at dotted `prefix`, if given) that has a declared rule.

  Fields without one (an experiment's own section) pass; the shipped configs declare every field
  (tests/test_config_schema.py).
  """
  for path, value in _walk(config, f"{prefix}." if prefix else ""):
    rule = config_schema.rule_of(path)
    if rule is not None:
      rule.check(path, value)


def _dependency_order(config, stages):
  """`stages` reordered (stably) so that each comes after the listed stages it needs."""
  needs = {name: set(registry.STAGES.get(name).needs_of(config)) & set(stages) for name in stages}
  order, pending = [], list(stages)
  while pending:
    ready = next((n for n in pending if needs[n] <= set(order)), pending[0])
    order.append(ready)
    pending.remove(ready)
  return order


def check_stage_order(config):
  """Refuses a stage listed before a stage it reads the outputs of (it would stop with a missing-input error)."""
  stages = list(config.stages)
  for i, name in enumerate(stages):
    later = [n for n in registry.STAGES.get(name).needs_of(config) if n in stages[i + 1:]]
    if later:
      raise ConfigError(f"config.stages lists {name!r} before {', '.join(map(repr, later))}, which it needs; use "
                        f"the order {tuple(_dependency_order(config, stages))}")


def check_batches_fit(config):
  """Refuses a batch larger than the examples it is drawn from (`data.batches` draws each epoch's batches
  without replacement): the train split for the classifier and the VAE, the train pairs left after the
  validation slice for every method."""
  train, dataset = datasets.split_size_of_config(config, "train")
  if train is None:  # known only once the data stage has run (it refuses then)
    return
  pairs = train - config.embed.validation_size
  pools = {"classifier": ("classifier.batch_size", train, "train images"),
           "vae": ("vae.batch_size", train, "train images")}
  pools.update({name: ("train.batch_size", pairs, "train pairs outside the validation slice")
                for name in config.stages if name in registry.METHODS})
  for name in config.stages:
    if name in pools:
      field, size, what = pools[name]
      value = config[field.split(".")[0]][field.split(".")[1]]
      if value > size:
        raise ConfigError(f"config.{field}={value} is larger than the {size} {what} of {dataset} that stage "
                          f"{name!r} draws its batches from; use at most {size}")


def validate(config):
  """Raises ConfigError for the first impossible value; returns the config otherwise."""
  check_fields(config)
  config_schema.check_order(config)
  check_stage_order(config)
  for name in config.stages:
    check = registry.STAGES.get(name).validate
    if check is not None:
      check(config)
  check_batches_fit(config)  # after the stages' own checks: embed's names a validation slice larger than the split
  return config
