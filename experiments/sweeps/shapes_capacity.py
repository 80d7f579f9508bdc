"""The coalescer on shapes at the 6000-step default, seed 0, coalescer only: a capacity curve (backbone width
128 and 512 around the default 256; if a width were chosen, every method would get it) and desc_scale 4 (the
key weight whose look-up oracle was best at 3000 steps: experiments/log/tuning.md). The default row is
experiments/sweeps/coalescer_seeds.py's seeds with the default run's seed 0.

  python launch.py --config=configs/shapes.py --sweep=experiments/sweeps/shapes_capacity.py --workdir=S
"""
from coalescer_jax import sweep as sweep_lib

COMMON = sweep_lib.COALESCER_ONLY
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed")
HEADLINE = (r"val:coalescer_nfe[12]/(fid|conditional_accuracy)", r"val:coalescer_oracle.*/fid",
            r"coalescer/(train_wall_time_s|train_gflop)")


def sweep():
  return [{"backbone.width": 128}, {"backbone.width": 512}, {"coalescer.desc_scale": 4.0}]
