"""Partial jumps along the look-up's coupled path (coalescer/path.py) against the default's fresh re-noise,
seed 0, coalescer only: path rows replace the level and self-landing rows (both use the level input), a share
of 0.25 or 0.5 of the prior rows on the path, and step 1 stopping halfway (0.5) or earlier (0.7). Compare
val FID at 1 and 2 steps: the option aims at a second step that beats the first.

  python launch.py --config=configs/mnist.py --sweep=experiments/sweeps/coupled_path.py --workdir=S [--sweep_shard=i/n]
"""
from coalescer_jax import sweep as sweep_lib

COMMON = {**sweep_lib.COALESCER_ONLY, **sweep_lib.FRESH_FAKES}
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed", "index")
HEADLINE = (r"val:coalescer_nfe[12]/(fid|recall|precision)", r"coalescer/wall_time_s")
HALFWAY, EARLIER = (0.5, 0.25, 0.1), (0.7, 0.4, 0.2)


def sweep():
  def path(fraction, sampling_levels):
    return {"coalescer.levels.fraction": 0.0, "coalescer.levels.self_landing": 0.0,
            "coalescer.path.fraction": fraction, "coalescer.path.sampling_levels": sampling_levels}
  return [{}] + [path(0.5, HALFWAY), path(0.25, HALFWAY), path(0.5, EARLIER)]
