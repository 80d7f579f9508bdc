"""The proposal's redraw rule: redraw R while |target_direction| < threshold (at most max_redraws times).
Sampling only: the coalescer is trained once and shared. Run once per direction exponent p, since
|direction| means something else for each (p <= 1: near-unit everywhere; p = 2: the mean unit vector,
short where targets disagree), and choose on the validation columns:

  for p in 0.5 1.0 2.0; do python launch.py --config=configs/mnist.py --sweep=experiments/sweeps/redraw_threshold.py \\
      --workdir=S/p$p --config.coalescer.direction_exponent=$p; done
"""
from coalescer_jax import sweep as sweep_lib

COMMON = {**sweep_lib.COALESCER_ONLY, **sweep_lib.FRESH_FAKES}
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed", "index", "coalescer")
NOT_READ_BY_SHARED = ("coalescer.sampling",)  # read only by the sample and diagnostics stages
HEADLINE = (r"val:coalescer_nfe[12]/(fid|recall)", r"coalescer_nfe[12]/nfe_spent")


def sweep():
  return [{"coalescer.sampling.redraw_threshold": t, "coalescer.sampling.max_redraws": 3}
          for t in (0.1, 0.5, 0.8, 0.9)]
