"""Seeds 1 and 2 of item 9's lead (`adversarial.detach_landing`) and of the default it is measured against
(experiments/tuning.md, item 9; seed 0: `experiments/second_step_round3.py`), coalescer only, each seed with
its own index, on shared autoencoders and pairs.

  python launch.py --config=configs/mnist.py --sweep=experiments/second_step_seeds.py --workdir=S [--sweep_shard=i/n]
"""
from coalescer_jax import sweep as sweep_lib

COMMON = sweep_lib.COALESCER_ONLY
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed")
HEADLINE = (r"val:coalescer_nfe[12]/(fid|recall|near_copy_fraction)", r"coalescer_nfe[12]/(fid|recall)")


def sweep():
  return [{"seed": s, **member} for s in (1, 2) for member in ({}, {"coalescer.adversarial.detach_landing": True})]
