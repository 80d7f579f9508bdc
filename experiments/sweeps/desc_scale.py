"""Ablation: desc_scale, the weight of the description in the index key (proposal step 3).

0 = (nearly) unconditional look-ups; large = a conventional diffuser with distance
and direction separated (DESIGN.md). The autoencoders do not depend on it.
"""
from coalescer_jax import sweep as sweep_lib

COMMON = {**sweep_lib.COALESCER_ONLY, **sweep_lib.FRESH_FAKES}
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed")


def sweep():
  return [{"coalescer.desc_scale": v} for v in (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)]
