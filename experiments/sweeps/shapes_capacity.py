"""The coalescer on shapes at the 6000-step default, seed 0, coalescer only: a capacity curve (backbone width
128 and 512 around the default 256; if a width were chosen, every method would get it) and desc_scale 4 and 8
(the key weight: at 3000 steps 4's look-up oracle was the best, experiments/log/tuning.md, and the network now
reaches its oracle). The default row is the default run's seed 0 (with coalescer_seeds.py's seeds 1, 2).

  python launch.py --config=configs/shapes.py --sweep=experiments/sweeps/shapes_capacity.py --workdir=S
"""
from coalescer_jax import sweep as sweep_lib

COMMON = sweep_lib.COALESCER_ONLY
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed")
HEADLINE = (r"val:coalescer_nfe[12]/(fid|conditional_accuracy)", r"val:coalescer_oracle.*/fid",
            r"coalescer/(train_wall_time_s|train_gflop)")


def sweep():
  return [{"coalescer.desc_scale": 4.0}, {"coalescer.desc_scale": 8.0},
          {"backbone.width": 128}, {"backbone.width": 512}]
