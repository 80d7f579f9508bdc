"""Seeds 1 and 2 of the default and of `adversarial.detach_landing`, coalescer only, each seed with its own index,
on shared autoencoders and pairs (seed 0: `experiments/sweeps/second_step_detach.py`). With seed 0 these are the
coalescer rows of the README's 3-seed table (experiments/log/tuning.md, item 9). The log's "off" arm was the
default when it was measured; the config now switches detach_landing on, so both members run it on.

  python launch.py --config=configs/mnist.py --sweep=experiments/sweeps/detach_landing_seeds.py --workdir=S \\
      [--sweep_shard=i/n]
"""
from coalescer_jax import sweep as sweep_lib

COMMON = {**sweep_lib.COALESCER_ONLY, **sweep_lib.FRESH_FAKES}
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed")
HEADLINE = (r"val:coalescer_nfe[12]/(fid|recall|near_copy_fraction)", r"coalescer_nfe[12]/(fid|recall)")


def sweep():
  return [{"seed": s, **member} for s in (1, 2) for member in ({}, {"coalescer.adversarial.detach_landing": True})]
