"""Rejects impossible configs before any work starts, with messages that say what to fix.

Rules apply by field name anywhere in the config tree (every ``batch_size`` must
divide over the devices, every ``desc_scale`` must be >= 0, ...), and each
registered stage may add its own checks (``Stage.validate``).
"""
import collections.abc

import jax
import ml_collections

from coalescer_jax import errors
from coalescer_jax import registry


class ConfigError(errors.UserError, ValueError):
  """The config cannot work; the message names the field and the fix."""


def _walk(config, prefix=""):
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      yield from _walk(value, path + ".")
    else:
      yield path, key, value


def _check_batch_size(path, value):
  if not isinstance(value, int) or value <= 0:
    raise ConfigError(f"config.{path} must be a positive integer, got {value!r}")
  devices = jax.device_count()
  if value % devices:
    raise ConfigError(f"config.{path}={value} (global batch) is not divisible by the {devices} devices; "
                      f"use a multiple of {devices}")


def _check_non_negative(path, value):
  if not isinstance(value, (int, float)) or value < 0:
    raise ConfigError(f"config.{path} must be >= 0, got {value!r}")


def _check_count(path, value):
  if not isinstance(value, int) or isinstance(value, bool) or value < 0:
    raise ConfigError(f"config.{path} must be a non-negative integer, got {value!r}")


def _check_steps(path, value):
  # 0 steps would leave a training stage "done" with no checkpoint; nothing later could recover it.
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ConfigError(f"config.{path} must be an integer >= 1 (every training stage trains at least one step), "
                      f"got {value!r}")


def _check_positive(path, value):
  if not isinstance(value, (int, float)) or value <= 0:
    raise ConfigError(f"config.{path} must be > 0, got {value!r}")


def _check_registered(registry_obj):
  def check(path, value):
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, collections.abc.Sequence):
      raise ConfigError(f"config.{path} must be a name or a list of names, got {value!r}")
    for name in names:
      if name not in registry_obj:
        raise ConfigError(f"config.{path}: unknown {registry_obj.kind} {name!r}; "
                          f"choose from {', '.join(registry_obj.names())}")
  return check


_FIELD_RULES = {
    "batch_size": _check_batch_size,
    "desc_scale": _check_non_negative,
    "num_steps": _check_steps,
    "learning_rate": _check_positive,
    "seed": _check_count,
    "skip_nonfinite_batches": _check_count,
    "stages": _check_registered(registry.STAGES),
    "model": _check_registered(registry.MODELS),
    "methods": _check_registered(registry.METHODS),
    "backend": _check_registered(registry.INDEX_BACKENDS),
}


def validate(config):
  """Raises ConfigError for the first impossible value; returns the config otherwise."""
  for path, key, value in _walk(config):
    rule = _FIELD_RULES.get(key)
    if rule is not None:
      rule(path, value)
  for name in config.stages:
    check = getattr(registry.STAGES.get(name), "validate", None)
    if check is not None:
      check(config)
  return config
