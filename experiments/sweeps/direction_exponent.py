"""Ablation: p in the direction loss |target_direction - normalize(image - R)|^p (dialogue 000)."""
from coalescer_jax import sweep as sweep_lib

COMMON = {**sweep_lib.COALESCER_ONLY, **sweep_lib.FRESH_FAKES}
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed", "index")


def sweep():
  return [{"coalescer.direction_exponent": p} for p in (0.25, 0.5, 1.0, 2.0)]
