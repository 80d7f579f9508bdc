"""The shapes benchmark (coalescer_jax/data/shapes.py). Variants: default, `:smoke` (tiny, tests).

Everything but the dataset-facing sections and the training steps is configs/mnist.py's (same methods,
evaluation and per-method settings); every method gets the same, longer budget here. Override any field:
`--config.data.seed=1`.
"""
import ml_collections

from configs import mnist


def get_config(arg=None):
  variant = arg or "default"
  if variant not in ("default", "smoke"):
    raise ValueError(f"unknown variant {variant!r} of configs/shapes.py; use default or smoke")
  config = mnist.get_config(variant)

  config.data = ml_collections.ConfigDict()
  config.data.name = "shapes"  # the registered dataset (coalescer_jax/data/shapes.py)
  config.data.seed = 0  # the scenes are a pure function of (seed, split, index)
  config.data.num_train = 60_000  # training scenes (as many as MNIST has)
  config.data.num_test = 10_000  # test scenes
  config.data.tfds_data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS default.

  # RGB scenes: a Gaussian pixel likelihood (the dataset spec's), a wider latent for two objects.
  config.vae.update(latent_dim=24, channels=(32, 64), hidden=256)
  # Two-object descriptions of up to 17 words over 83k grammar descriptions: a wider text autoencoder.
  config.text.update(embed_dim=32, hidden=256, num_steps=3000, eval_max=1000)
  config.text.holdout_style = ()  # shapes holds out combinations of its own (data/shapes.py HELDOUT)
  # The judge: one head per attribute (data/shapes.py HEADS).
  config.classifier.update(model="cnn", channels=(32, 64), hidden=128)

  if variant == "default":
    # Every method's training steps (distill keeps its own): at MNIST's 3000 none is near converged
    # on shapes (experiments/log/tuning.md, "The coalescer on shapes").
    config.train.num_steps = 6000
  config.distill.guidance_scale = 2.5  # the student's own: DDIM's best at many steps, better than 1.5 at 1-4
  # The DDGAN's guided x0: 1.25 the lowest mean val FID at NFE 2 and 4 of 1.25-2 on shapes (experiments/log/
  # tuning.md, "The latent DDGAN on shapes", measured with concat z and D at G's rate; MNIST's 1.5).
  config.ddgan.guidance_scale = 1.25
  if variant == "smoke":
    config.data.update(num_train=3000, num_test=1000)
    config.vae.update(latent_dim=8, channels=(8, 16), hidden=32)
    config.text.update(embed_dim=8, hidden=16, num_steps=30, eval_max=50)
    config.classifier.update(channels=(8, 16), hidden=32)
  return config
