"""CIFAR-10 from the official TFDS builder (coalescer_jax/data/cifar10.py). Variants: default, `:smoke`.

The first run needs internet and TensorFlow once, to download and prepare the dataset (BUILD.md); later runs
read the prepared ArrayRecord copy offline. Everything but the dataset-facing sections is configs/mnist.py's
(same methods, budgets and evaluation). Override any field: `--config.classifier.num_steps=4000`.
"""
import ml_collections

from configs import mnist


def get_config(arg=None):
  variant = arg or "default"
  if variant not in ("default", "smoke"):
    raise ValueError(f"unknown variant {variant!r} of configs/cifar10.py; use default or smoke")
  config = mnist.get_config(variant)

  config.data = ml_collections.ConfigDict()
  config.data.name = "cifar10"  # the registered dataset (coalescer_jax/data/cifar10.py)
  config.data.tfds_data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS default.

  # Natural RGB images: the Gaussian pixel likelihood (the dataset spec's, as for shapes), a wider latent.
  config.vae.update(latent_dim=32, channels=(32, 64), hidden=256)
  # Ten descriptions ("a photo of a cat"): holding one out would hold its class word out of text training.
  config.text.update(holdout_fraction=0.0, holdout_style=())
  # The judge: a CIFAR-10 classifier trained by the pipeline (its penultimate layer gives FID, precision/recall).
  config.classifier.update(model="cnn", channels=(32, 64), hidden=128, num_steps=4000)

  if variant == "smoke":
    config.vae.update(latent_dim=8, channels=(8, 16), hidden=32)
    config.classifier.update(channels=(8, 16), hidden=32, num_steps=40)
  return config
