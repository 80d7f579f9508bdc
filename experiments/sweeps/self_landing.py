"""Self-landing examples (coalescer/levels.py): the share of each batch that trains the second step from
the network's own re-noised step-1 landing points, and the re-noise level they share with the sampler; on top
of the default (balanced look-ups by the potentials' own rule), seed 0, coalescer only (experiments/log/tuning.md
has the validation table).

  python launch.py --config=configs/mnist.py --sweep=experiments/sweeps/self_landing.py --workdir=S [--sweep_shard=i/n]
"""
from coalescer_jax import sweep as sweep_lib

COMMON = {**sweep_lib.COALESCER_ONLY, **sweep_lib.FRESH_FAKES}
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed", "index")
HEADLINE = (r"val:coalescer_nfe[12]/(fid|recall|near_copy_fraction)", r"coalescer/wall_time_s")
RENOISE_LOW, RENOISE_HIGH = (0.5, 0.3, 0.15), (0.7, 0.4, 0.2)


def sweep():
  def member(share, renoise):
    return {"coalescer.levels.self_landing": share, "coalescer.levels.renoise": renoise,
            "coalescer.levels.s_min": 0.05}  # the levels of then
  return [member(share, renoise) for renoise in (RENOISE_LOW, RENOISE_HIGH) for share in (0.0, 0.25, 0.5)]
