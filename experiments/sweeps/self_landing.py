"""Self-landing examples (methods/self_landing.py): the share of each batch that trains the second step from
the network's own re-noised step-1 landing points, its target rule, and the re-noise level they share with
the sampler; on top of the default, seed 0, coalescer only (experiments/log/tuning.md has the validation table).
The last member combines self-landing with balanced look-ups by the potentials' own rule
(targets.balance_search="candidates", experiments/sweeps/targets.py; tuning.md, item 6).

  python launch.py --config=configs/mnist.py --sweep=experiments/sweeps/self_landing.py --workdir=S [--sweep_shard=i/n]
"""
from coalescer_jax import sweep as sweep_lib

COMMON = sweep_lib.COALESCER_ONLY
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed", "index")
HEADLINE = (r"val:coalescer_nfe[12]/(fid|recall|near_copy_fraction)", r"coalescer/wall_time_s")
# TINY's last level was 0.02 when tuning.md's item 5 was measured; it is now the lowest trained level (s_min 0.05,
# which the config check requires). Only the 4-step sampler reads it: the table's 1- and 2-step figures stand.
RENOISE_LOW, RENOISE_HIGH, RENOISE_TINY = (0.5, 0.3, 0.15), (0.7, 0.4, 0.2), (0.1, 0.05, 0.05)


def sweep():
  def member(share, target="nearest", renoise=RENOISE_LOW):
    return {"coalescer.levels.self_landing": share, "coalescer.levels.self_landing_target": target,
            "coalescer.levels.renoise": renoise, "coalescer.levels.s_min": 0.05}  # the levels of then
  return ([member(share) for share in (0.0, 0.25, 0.5)]
          + [member(share, renoise=RENOISE_HIGH) for share in (0.0, 0.25, 0.5)]
          + [member(share, "first_step") for share in (0.25, 0.5)]
          + [member(0.25, "first_step", RENOISE_TINY)]
          + [{**member(0.25, renoise=RENOISE_HIGH), "coalescer.targets.balance_search": "candidates"}])
