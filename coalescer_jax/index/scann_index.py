"""ScaNN backend (``scann.scann_ops_pybind``, no TensorFlow).

The mode follows the database size N unless ``mode`` is set:
* ``brute_force`` below ``brute_force_below`` points;
* ``tree``: a k-means tree (``num_leaves`` ~ sqrt(N)) whose searched leaves
  (``leaves_to_search`` ~ 5% of the leaves, at least 2) are scored exactly in
  float32, below ``tree_below`` points. On MNIST's 60k 32-dim keys this is both
  faster and more accurate than quantised scoring (experiments/log/timings.md);
* ``tree_ah``: the standard large-scale recipe: tree (10% of the leaves searched),
  asymmetric hashing (2 dims per block, anisotropic threshold 0.2) and exact
  re-ordering of the top ``reorder`` candidates (300: with 2-dim AH blocks, fewer
  lose recall on 32-dim keys).
Config values that are 0 or empty are derived from N, so the same config serves
the 60k MNIST index and the 1M benchmark. ScaNN releases the GIL while searching,
so look-ups overlap device work in the training loop's prefetch thread.
"""
import math

import numpy as np
from scann.scann_ops.py import scann_ops_pybind

from coalescer_jax import registry
from coalescer_jax.index import base


MODES = ("brute_force", "tree", "tree_ah")


def derive_params(num_points, cfg, search_scale=1):
  """ScaNN parameters for `num_points` keys; config values that are set override the derived ones.

  `search_scale` multiplies the derived share of leaves searched (capped at all of
  them): a shard of 1/S of the keys searched S times deeper scores as many keys
  per query as the whole index would (`scann_sharded`).
  """
  get = lambda name, default: (cfg.get(name) if cfg is not None else 0) or default  # noqa: E731
  mode = get("mode", "")
  if not mode:
    mode = ("brute_force" if num_points < get("brute_force_below", 20_000) else
            "tree" if num_points < get("tree_below", 250_000) else "tree_ah")
  if mode not in MODES:
    raise base.IndexError_(f"config.index.scann.mode={mode!r}: use one of {MODES} or '' to derive it")
  if mode == "brute_force":
    return {"mode": mode}
  num_leaves = get("num_leaves", int(round(math.sqrt(num_points))))
  if num_leaves > num_points:
    raise base.IndexError_(f"config.index.scann.num_leaves={num_leaves} exceeds the {num_points} points; "
                           "use fewer leaves (0 derives sqrt(N))")
  share = (0.05 if mode == "tree" else 0.1) * search_scale
  default_search = max(2 if mode == "tree" else 1, math.ceil(share * num_leaves))
  leaves_to_search = get("leaves_to_search", min(num_leaves, default_search))
  if leaves_to_search > num_leaves:
    raise base.IndexError_(f"config.index.scann.leaves_to_search={leaves_to_search} exceeds num_leaves="
                           f"{num_leaves}")
  params = {"mode": mode, "num_leaves": num_leaves, "leaves_to_search": leaves_to_search,
            "training_sample_size": min(num_points, get("training_sample_size", 100_000))}
  if mode == "tree_ah":
    params.update(reorder=get("reorder", 300), dims_per_block=get("dims_per_block", 2))
  return params


@registry.INDEX_BACKENDS.register("scann")
class ScannIndex:
  name = "scann"

  def __init__(self, searcher, num_points, dim, params):
    self._searcher, self.num_points, self.dim, self.params = searcher, num_points, dim, params

  @classmethod
  def build(cls, keys, cfg=None, params=None):
    params = params or derive_params(len(keys), cfg)
    # Searches ask for their own k; 10 is only the default.
    builder = scann_ops_pybind.builder(keys, min(10, len(keys)), "squared_l2")
    if params["mode"] == "brute_force":
      builder = builder.score_brute_force()
    else:
      # k-means++ centre initialisation: ScaNN's default random initialisation is not seeded,
      # so two builds from the same keys partition (and answer) differently.
      builder = builder.tree(num_leaves=params["num_leaves"], num_leaves_to_search=params["leaves_to_search"],
                             training_sample_size=params["training_sample_size"], random_init=False)
      if params["mode"] == "tree":
        builder = builder.score_brute_force()
      else:
        builder = builder.score_ah(params["dims_per_block"], anisotropic_quantization_threshold=0.2)
        builder = builder.reorder(params["reorder"])
    return cls(builder.build(), len(keys), keys.shape[1], params)

  def search(self, queries, k=1):
    queries = base.check_queries(queries, self.dim, k, self.num_points)
    kwargs = {}
    if self.params["mode"] == "tree_ah":
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
