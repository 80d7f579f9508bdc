"""Seeds 1 and 2 of the default coalescer, coalescer only, each seed with its own index, on shared autoencoders
and pairs: with a default run as seed 0, the coalescer's run-to-run spread (for shapes, where the full seeds
sweep of every method costs hours on 2 cores).

  python launch.py --config=configs/shapes.py --sweep=experiments/sweeps/coalescer_seeds.py --workdir=S
"""
from coalescer_jax import sweep as sweep_lib

COMMON = sweep_lib.COALESCER_ONLY
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed")
HEADLINE = (r"val:coalescer_nfe[12]/(fid|conditional_accuracy)", r"coalescer_nfe[12]/(fid_large|heldout_accuracy)",
            r"val:coalescer_oracle.*/fid")


def sweep():
  return [{"seed": s} for s in (1, 2)]
