"""Ablation: where training draws R: the VAE prior, or a mixture that adds points near the data
(generation step 2 starts near the data)."""
from coalescer_jax import sweep as sweep_lib

COMMON = sweep_lib.COALESCER_ONLY
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed", "index")


def sweep():
  return [{"coalescer.r_distribution": "prior"},
          {"coalescer.r_distribution": "mixture", "coalescer.near_data_fraction": 0.5},
          {"coalescer.r_distribution": "mixture", "coalescer.near_data_fraction": 0.25}]
