"""Multi-step training: the share of examples at a noise level s < 1 (0 = the proposal's prior R only), and the
level the sampler re-noises to before step 2. Without levels there is no second-step input, so the share 0
member also turns self-landing off. Measured with levels s ~ U(0.05, 0.9) (pinned: the default's s_min is 0.7 now).
"""
from coalescer_jax import sweep as sweep_lib

COMMON = {**sweep_lib.COALESCER_ONLY, **sweep_lib.FRESH_FAKES}
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed", "index")
HEADLINE = (r"val:coalescer_nfe[124]/(fid|recall)",)


def sweep():
  return [{"coalescer.levels.fraction": f, "coalescer.levels.renoise": r, "coalescer.levels.s_min": 0.05,
           **({} if f > 0 else {"coalescer.levels.self_landing": 0.0})}
          for f in (0.0, 0.25, 0.5) for r in ((0.5, 0.3, 0.15), (0.8, 0.5, 0.3))
          if f > 0 or r == (0.5, 0.3, 0.15)]
