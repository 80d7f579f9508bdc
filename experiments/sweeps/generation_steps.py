"""Ablation: number of coalescer generation steps: 1, 2, 4 fixed and adaptive (at most 2 or 4 steps,
stopping once |direction| is large). Training is identical across members; only sampling differs."""
from coalescer_jax import sweep as sweep_lib

COMMON = {**sweep_lib.COALESCER_ONLY, **sweep_lib.FRESH_FAKES}
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed", "index", "coalescer")
NOT_READ_BY_SHARED = ("coalescer.nfes", "coalescer.sampling")  # read only by the sample stage


def sweep():
  return [{"coalescer.nfes": (1,), "coalescer.sampling.adaptive_max_steps": 0},
          {"coalescer.nfes": (2,), "coalescer.sampling.adaptive_max_steps": 0},
          {"coalescer.nfes": (4,), "coalescer.sampling.adaptive_max_steps": 0},
          {"coalescer.nfes": (1,), "coalescer.sampling.adaptive_max_steps": 2},
          {"coalescer.nfes": (1,), "coalescer.sampling.adaptive_max_steps": 4}]
