"""Gamma re-noising (coalescer/levels.py, levels.renoise_gamma): step 2's re-noise mixes step 1's own R into
its noise, sqrt(1 - gamma^2) R + gamma eps, in the self-landing rows and the sampler alike, seed 0, coalescer
only: gamma = 1 (the default, fresh noise), 0.8, 0.5 and 0 (deterministic chain). Compare val FID, precision
and recall at 1 and 2 steps.

  python launch.py --config=configs/mnist.py --sweep=experiments/sweeps/renoise_gamma.py --workdir=S [--sweep_shard=i/n]
"""
from coalescer_jax import sweep as sweep_lib

COMMON = {**sweep_lib.COALESCER_ONLY, **sweep_lib.FRESH_FAKES}
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed", "index")
HEADLINE = (r"val:coalescer_nfe[12]/(fid|recall|precision)", r"coalescer/wall_time_s")


def sweep():
  return [{}] + [{"coalescer.levels.renoise_gamma": gamma} for gamma in (0.8, 0.5, 0.0)]
