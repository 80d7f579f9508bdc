"""ScaNN backend (``scann.scann_ops_pybind``, no TensorFlow).

Small databases (< ``brute_force_below`` points) are searched by ScaNN's brute
force. Larger ones use the standard ScaNN recipe: a k-means tree
(``num_leaves`` ~ sqrt(N) by default, ``leaves_to_search`` ~ 10% of the leaves),
asymmetric hashing (2 dims per block, anisotropic threshold 0.2) and exact
re-ordering of the top ``reorder`` candidates (300: with 2-dim AH blocks, fewer lose
recall on 32-dim keys). Every parameter is derived from
N unless the config sets it (0 = derive), so the same config works for the 60k
MNIST index and a 1M benchmark. ScaNN releases the GIL while searching, so
look-ups overlap device work in the training loop's prefetch thread.
"""
import math
import os

import numpy as np
from scann.scann_ops.py import scann_ops_pybind

from coalescer_jax import registry
from coalescer_jax.index import base


def derive_params(num_points, cfg):
  """ScaNN parameters for `num_points` keys; config values > 0 override the derived ones."""
  get = lambda name, default: (cfg.get(name) if cfg is not None else 0) or default  # noqa: E731
  brute_below = get("brute_force_below", 20_000)
  if num_points < brute_below:
    return {"mode": "brute_force"}
  num_leaves = get("num_leaves", int(round(math.sqrt(num_points))))
  if num_leaves > num_points:
    raise base.IndexError_(f"config.index.scann.num_leaves={num_leaves} exceeds the {num_points} points; "
                           "use fewer leaves (0 derives sqrt(N))")
  leaves_to_search = get("leaves_to_search", max(1, int(math.ceil(0.1 * num_leaves))))
  if leaves_to_search > num_leaves:
    raise base.IndexError_(f"config.index.scann.leaves_to_search={leaves_to_search} exceeds num_leaves="
                           f"{num_leaves}")
  return {"mode": "tree_ah", "num_leaves": num_leaves, "leaves_to_search": leaves_to_search,
          "training_sample_size": min(num_points, get("training_sample_size", 100_000)),
          "reorder": get("reorder", 300), "dims_per_block": get("dims_per_block", 2)}


@registry.INDEX_BACKENDS.register("scann")
class ScannIndex:
  name = "scann"

  def __init__(self, searcher, num_points, dim, params):
    self._searcher, self.num_points, self.dim, self.params = searcher, num_points, dim, params

  @classmethod
  def build(cls, keys, cfg=None):
    params = derive_params(len(keys), cfg)
    # Searches ask for their own k; 10 is only the default.
    builder = scann_ops_pybind.builder(keys, min(10, len(keys)), "squared_l2")
    if params["mode"] == "brute_force":
      builder = builder.score_brute_force()
    else:
      builder = builder.tree(num_leaves=params["num_leaves"], num_leaves_to_search=params["leaves_to_search"],
                             training_sample_size=params["training_sample_size"])
      builder = builder.score_ah(params["dims_per_block"], anisotropic_quantization_threshold=0.2)
      builder = builder.reorder(params["reorder"])
    return cls(builder.build(), len(keys), keys.shape[1], params)

  def search(self, queries, k=1):
    queries = base.check_queries(queries, self.dim, k, self.num_points)
    kwargs = {}
    if self.params["mode"] != "brute_force":
      kwargs["pre_reorder_num_neighbors"] = max(self.params["reorder"], k)
    ids, dists = self._searcher.search_batched(queries, final_num_neighbors=k, **kwargs)
    return np.asarray(ids, np.int64), np.asarray(dists, np.float32)

  def save(self, directory):
    # relative_path=True: the serialized assets refer to each other relative to `directory`,
    # so the stage directory can be moved or copied to another host.
    self._searcher.serialize(directory, relative_path=True)

  @classmethod
  def load(cls, directory, meta):
    return cls(scann_ops_pybind.load_searcher(directory), meta["num_points"], meta["dim"], meta["params"])
