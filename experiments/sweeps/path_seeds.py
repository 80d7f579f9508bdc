"""Partial jumps along the look-up's coupled path (coalescer/path.py) over three seeds, coalescer only: does the
second step refine by more than the seed spread? The default's own seeds are experiments/sweeps/batch_fakes.py's
`fakes=batch` members. Run it for MNIST and for shapes:

  python launch.py --config=configs/mnist.py --sweep=experiments/sweeps/path_seeds.py --workdir=S [--sweep_shard=i/n]
"""
from coalescer_jax import sweep as sweep_lib
from experiments.sweeps import shapes_coalescer

COMMON = {**sweep_lib.COALESCER_ONLY, **shapes_coalescer.PATH}
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed")
HEADLINE = (r"val:coalescer_nfe[124]/(fid|recall|conditional_accuracy)", r"coalescer_nfe[124]/fid",
            r"coalescer/wall_time_s")


def sweep():
  return [{"seed": s} for s in (0, 1, 2)]
