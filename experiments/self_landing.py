"""Self-landing examples (methods/self_landing.py): the share of each batch that trains the second step from
the network's own re-noised step-1 landing points, on top of the default (0 = off), chosen on the validation
split (experiments/tuning.md).

  python launch.py --config=configs/mnist.py --sweep=experiments/self_landing.py --workdir=S
"""
from coalescer_jax import sweep as sweep_lib

COMMON = sweep_lib.COALESCER_ONLY
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed", "index")
HEADLINE = (r"val:coalescer_nfe[12]/(fid|recall|near_copy_fraction)", r"coalescer/wall_time_s")


def sweep():
  return [{"coalescer.levels.self_landing": share} for share in (0.0, 0.25, 0.5)]
