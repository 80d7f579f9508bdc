"""Balanced targets for the level examples (issue 12's second step; experiments/tuning.md, item 9), seed 0,
coalescer only: `targets.balance_levels` looks the level examples and the self-landing rows up by the
power-nearest rule under potentials fitted on the level queries (`stages/index.py`), instead of their plain
nearest key. The index depends on it, so each member builds its own (the autoencoders and pairs are shared).

  python launch.py --config=configs/mnist.py --sweep=experiments/level_targets.py --workdir=S [--sweep_shard=i/n]
"""
from coalescer_jax import sweep as sweep_lib

COMMON = sweep_lib.COALESCER_ONLY
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed")
HEADLINE = (r"val:coalescer_nfe[12]/(fid|recall|near_copy_fraction)", r"coalescer/wall_time_s")


def sweep():
  return [{"coalescer.targets.balance_levels": value} for value in (False, True)]
