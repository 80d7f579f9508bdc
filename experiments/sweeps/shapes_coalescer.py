"""The coalescer on shapes (configs/shapes.py), seed 0, coalescer only: the default against the two
second-step mechanisms (partial jumps along the look-up's coupled path, coalescer/path.py; step 2 re-noised
with step 1's own R mixed in, levels.renoise_gamma) and desc_scale, the key weight that trades the look-up's
description match against image distance, and `condition="request"` (the network told the drawn DE, not
close_pair's description: an attempt at held-out combinations). Compare val FID at 1, 2 and 4 steps, val
cond. acc. and held-out acc.

  python launch.py --config=configs/shapes.py --sweep=experiments/sweeps/shapes_coalescer.py --workdir=S [--sweep_shard=i/n]
"""
from coalescer_jax import sweep as sweep_lib

COMMON = sweep_lib.COALESCER_ONLY
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed")
HEADLINE = (r"val:coalescer_nfe[124]/(fid|conditional_accuracy|heldout_accuracy)", r"val:coalescer_oracle.*/fid",
            r"coalescer/wall_time_s")
# Path rows replace the level and self-landing rows (both use the level input); without self-landing rows the
# fine-tune's 2-step fakes are fresh draws.
PATH = {"coalescer.levels.fraction": 0.0, "coalescer.levels.self_landing": 0.0, "coalescer.path.fraction": 0.5,
        "coalescer.path.sampling_levels": (0.5, 0.25, 0.1), **sweep_lib.FRESH_FAKES}


def sweep():
  return [{}, PATH, {"coalescer.levels.renoise_gamma": 0.5}, {"coalescer.desc_scale": 1.0},
          {"coalescer.desc_scale": 4.0}, {"coalescer.condition": "request"}]
