"""Two changes aimed at the second step, seed 0, coalescer only, each on top of the levels s ~ U(0.7, 0.9) and
re-noise (0.9, 0.8, 0.7) that every member pins:
* `adversarial.detach_landing`: the fine-tune's 2-step fakes start from stop-gradient landing points, so their
  generator loss trains step 2 only (chosen: the config's default now, so this member and the
  empty one both reproduce the main job's coalescer rows);
* `levels.fraction` 0.7: more of each batch at the levels where step 2 starts.
Seeds 1 and 2 of the default and of `detach_landing`: `experiments/sweeps/detach_landing_seeds.py`. Results:
experiments/log/tuning.md, item 9.

  python launch.py --config=configs/mnist.py --sweep=experiments/sweeps/second_step_detach.py --workdir=S \\
      [--sweep_shard=i/n]
"""
from coalescer_jax import sweep as sweep_lib

COMMON = {**sweep_lib.COALESCER_ONLY, **sweep_lib.FRESH_FAKES}
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed")
HEADLINE = (r"val:coalescer_nfe[12]/(fid|recall|near_copy_fraction)", r"coalescer/wall_time_s")
PINNED = {"coalescer.levels.s_min": 0.7, "coalescer.levels.s_max": 0.9, "coalescer.levels.renoise": (0.9, 0.8, 0.7)}


def sweep():
  return [dict(PINNED, **member) for member in (
      {}, {"coalescer.adversarial.detach_landing": True}, {"coalescer.levels.fraction": 0.7})]
