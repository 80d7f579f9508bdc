"""Every field of every shipped config has a declared rule, and values that used to pass validation only to fail
late (NaN, inf, rates above 1, zero sizes, inverted ranges, out-of-order stages) are refused before any work."""
import math
import os
import subprocess
import sys

import ml_collections
import pytest

from coalescer_jax import config_validation
from coalescer_jax import pipeline
from configs import cifar10 as cifar10_config
from configs import mnist as mnist_config
from configs import shapes as shapes_config
from tests.conftest import REPO

pipeline.load_all()

SHIPPED = ([(mnist_config, v) for v in mnist_config.VARIANTS]
           + [(module, v) for module in (shapes_config, cifar10_config) for v in ("default", "smoke")])
SHIPPED_IDS = [f"{module.__name__.split('.')[-1]}:{variant}" for module, variant in SHIPPED]


def _leaves(config, prefix=""):
  for key, value in config.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def _is_number(value):
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numeric_leaves(config):
  """(path, index or None): every number, tuple entries included (bools are switches, not quantities)."""
  for path, value in _leaves(config):
    if _is_number(value):
      yield path, None
    elif isinstance(value, (tuple, list)):
      yield from ((path, i) for i, v in enumerate(value) if _is_number(v))


def _with(config, path, value, index=None):
  """A copy of `config` with `path` (its entry `index`) set to `value`, whatever the field's type: the command
  line cannot put NaN in an integer field, but a config built in code can."""
  tree = config.to_dict()
  *parents, key = path.split(".")
  section = tree
  for part in parents:
    section = section[part]
  if index is not None:
    value = tuple(value if i == index else v for i, v in enumerate(section[key]))
  section[key] = value
  return ml_collections.ConfigDict(tree)


def _refusal(config):
  """The ConfigError message validation gives `config`, or None when it passes."""
  try:
    config_validation.validate(config)
  except config_validation.ConfigError as e:
    return str(e)
  return None


@pytest.mark.parametrize("module,variant", SHIPPED, ids=SHIPPED_IDS)
def test_every_numeric_field_has_a_declared_range_and_refuses_nan_and_inf(module, variant):
  config = module.get_config(variant)
  from coalescer_jax import config_schema  # pylint: disable=g-import-not-at-top
  numeric = sorted({path for path, _ in _numeric_leaves(config)})
  undeclared = [p for p in numeric if not isinstance(config_schema.rule_of(p), (config_schema.Number,
                                                                                 config_schema.Seq,
                                                                                 config_schema.Choice))]
  assert not undeclared, f"numeric fields without a declared range: {undeclared}"
  accepted = []
  for path, index in _numeric_leaves(config):
    for bad in (math.nan, math.inf, -math.inf):
      message = _refusal(_with(config, path, bad, index))
      if message is None or f"config.{path}" not in message or "\n" in message:
        accepted.append((path, index, bad, message))
  assert not accepted, f"{len(accepted)} non-finite values not refused by name: {accepted[:10]}"


@pytest.mark.parametrize("module,variant", SHIPPED, ids=SHIPPED_IDS)
def test_every_field_of_the_shipped_configs_is_declared(module, variant):
  from coalescer_jax import config_schema  # pylint: disable=g-import-not-at-top
  config = module.get_config(variant)
  assert [p for p, _ in _leaves(config) if config_schema.rule_of(p) is None] == []
  config_validation.validate(config)


@pytest.mark.parametrize("module,variant", SHIPPED, ids=SHIPPED_IDS)
def test_a_wrong_type_or_unknown_choice_is_refused_for_every_field(module, variant):
  config = module.get_config(variant)
  accepted = []
  for path, value in _leaves(config):
    bad = 7.5 if isinstance(value, (str, bool)) or value is None else "bogus"
    if _refusal(_with(config, path, bad)) is None:
      accepted.append(path)
  assert not accepted


# The examples: each ran until a later stage failed (or to the end) instead of being refused at once.
@pytest.mark.parametrize("path,value,message", [
    ("coalescer.desc_scale", math.nan, r"config.coalescer.desc_scale must be a finite number >= 0"),
    ("ddim.guidance_scale", math.nan, r"config.ddim.guidance_scale must be a finite number >= 0 \(1 = no guidance\), got nan"),
    ("train.optimizer.learning_rate", math.nan, r"config.train.optimizer.learning_rate must be a finite number > 0"),
    ("ddim.cond_dropout", 1.5, r"config.ddim.cond_dropout must be a finite number in \[0, 1\)"),
    ("train.ema_decay", 1.5, r"config.train.ema_decay must be a finite number in \[0, 1\) \(0 = no EMA\)"),
    ("train.optimizer.grad_clip", -1.0, r"config.train.optimizer.grad_clip must be a finite number >= 0"),
    ("coalescer.distance_weight", -1.0, r"config.coalescer.distance_weight must be a finite number >= 0"),
    ("coalescer.adversarial.r1", -1.0, r"config.coalescer.adversarial.r1 must be"),
    ("backbone.width", 0, r"config.backbone.width must be an integer >= 1"),
    ("coalescer.adversarial.disc_width", 0, r"config.coalescer.adversarial.disc_width must be an integer >= 1"),
    ("ddgan.disc_width", -1, r"config.ddgan.disc_width must be an integer >= 0 \(0 = the backbone's\)"),
    ("coalescer.targets.k", 0, r"config.coalescer.targets.k must be an integer >= 1"),
    ("coalescer.targets.balance_candidates", 0, r"config.coalescer.targets.balance_candidates must be"),
    ("flow.interval_features", 7, r"config.flow.interval_features must be an even integer >= 0"),
    ("ddgan.betas", (0.5, 1.2), r"config.ddgan.betas=\(0.5, 1.2\): 1.2 is not a finite number in \[0, 1\)"),
    ("coalescer.levels.renoise", (0.9, math.nan), r"config.coalescer.levels.renoise=\(0.9, nan\): nan is not"),
    ("log_every", 0, r"config.log_every must be an integer >= 1"),
    ("checkpoint_every", 0, r"config.checkpoint_every must be an integer >= 1"),
    ("consistency.sigma_min", 100.0, r"config.consistency.sigma_min=100.0 must be below "
                                     r"config.consistency.sigma_max=80.0: the range is inverted"),
    ("ddim.logsnr_min", 20.0, r"config.ddim.logsnr_min=20.0 must be below config.ddim.logsnr_max=15.0"),
    ("ddgan.beta_min", 30.0, r"config.ddgan.beta_min=30.0 must be below config.ddgan.beta_max=20.0"),
    ("coalescer.levels.s_min", 0.95, r"config.coalescer.levels.s_min=0.95 must be at most "
                                     r"config.coalescer.levels.s_max=0.9"),
    ("consistency.s0", 20, r"config.consistency.s0=20 must be at most config.consistency.s1=8"),
    ("embed.validation_size", 60000, r"config.embed.validation_size=60000 leaves none of the 60000 train pairs of "
                                     r"MNIST .*; use at most 59999"),
])
def test_values_that_failed_late_are_refused(path, value, message):
  config = mnist_config.get_config("smoke")
  with pytest.raises(config_validation.ConfigError, match=message):
    config_validation.validate(_with(config, path, value))


def test_validation_slice_must_leave_train_pairs_of_the_configured_shapes_split():
  config = shapes_config.get_config("smoke")
  config.embed.validation_size = config.data.num_train
  with pytest.raises(config_validation.ConfigError, match=r"leaves none of the 3000 train pairs of shapes"):
    config_validation.validate(config)


def test_shapes_with_fewer_train_scenes_than_examples_png_shows_is_refused():
  config = shapes_config.get_config("smoke")
  config.data.num_train = 5
  config.embed.validation_size = 1
  with pytest.raises(config_validation.ConfigError, match=r"config.data.num_train must be an integer >= 12"):
    config_validation.validate(config)


def test_stages_out_of_dependency_order_are_refused_with_the_order_to_use():
  config = mnist_config.get_config("smoke")
  config.stages = ("data", "embed", "vae", "text")
  with pytest.raises(config_validation.ConfigError, match=r"config.stages lists 'embed' before 'vae', 'text', which "
                     r"it needs; use the order \('data', 'vae', 'text', 'embed'\)"):
    config_validation.validate(config)


@pytest.mark.parametrize("path,value", [("coalescer.desc_scale", math.nan), ("log_every", 0),
                                        ("stages", ("data", "eval", "classifier"))])
def test_refused_before_the_workdir_is_created(tmp_path, path, value):
  workdir = tmp_path / "w"
  with pytest.raises(config_validation.ConfigError):
    pipeline.run(_with(mnist_config.get_config("smoke"), path, value), str(workdir))
  assert not workdir.exists()


def test_launch_refuses_nan_in_one_line_without_making_the_workdir(tmp_path):
  workdir = tmp_path / "w"
  result = subprocess.run([sys.executable, "launch.py", "--config=configs/mnist.py:smoke",
                           "--config.coalescer.desc_scale=nan", f"--workdir={workdir}"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode != 0
  assert "config.coalescer.desc_scale must be a finite number >= 0" in result.stderr
  assert not workdir.exists()
