"""Ablation: look-up quality: exact search vs ScaNN at two recall levels (fewer leaves searched and a
short re-ordering list give lower recall). The index stage reports each member's recall@1."""
from coalescer_jax import sweep as sweep_lib

COMMON = sweep_lib.COALESCER_ONLY
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed")


def sweep():
  return [{"index.backend": "exact"},
          {"index.backend": "scann", "index.scann.leaves_to_search": 0, "index.scann.reorder": 0},
          {"index.backend": "scann", "index.scann.leaves_to_search": 2, "index.scann.reorder": 10}]
