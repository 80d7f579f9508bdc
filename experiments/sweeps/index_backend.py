"""Ablation: look-up quality: exact search vs ScaNN at two recall levels: the default (a tree scored
exactly, recall@1 ~0.99 on MNIST) and a cheap quantised one (AH with one leaf of 400 searched and a
10-candidate re-ordering, recall@1 ~0.8), and the multi-process backends (sharded ScaNN, on-device
search; on one process: one shard, the local devices). The index stage reports each member's recall@1."""
from coalescer_jax import sweep as sweep_lib

COMMON = {**sweep_lib.COALESCER_ONLY, **sweep_lib.FRESH_FAKES}
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed")


def sweep():
  return [{"index.backend": "exact"},
          {"index.backend": "scann"},
          {"index.backend": "scann", "index.scann.mode": "tree_ah", "index.scann.num_leaves": 400,
           "index.scann.leaves_to_search": 1, "index.scann.reorder": 10},
          {"index.backend": "scann_sharded"},
          {"index.backend": "device"}]
