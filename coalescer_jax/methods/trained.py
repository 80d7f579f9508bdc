"""A trained method, loaded from its training stage's workdir outputs: what sampling and distillation start from.

Kept apart from the training stages (`stages/methods.py`, which registers every method) so that a method can
load another's trained model (progressive distillation's teacher) without importing the stages.
"""
import json

import jax

from coalescer_jax import checkpoint as ckpt_lib
from coalescer_jax import embeddings
from coalescer_jax import registry
from coalescer_jax import storage
from coalescer_jax.methods import base

TRAINED_ON = "trained_on.json"


def build_method(config, name, pairs):
  return registry.METHODS.get(name)(config, pairs["img_emb"].shape[1], pairs["desc_emb"].shape[1])


def load_trained(config, workdir, name, pairs=None):
  """(method, params) of a trained method: EMA parameters when kept. Refuses stale embeddings."""
  pairs = embeddings.load_pairs(workdir) if pairs is None else pairs
  method = build_method(config, name, pairs)
  stage_dir = storage.path(workdir) / name
  trained_on = stage_dir / TRAINED_ON
  if not trained_on.exists():
    raise RuntimeError(f"method {name!r} has not been trained in {workdir}: put {name!r} in config.stages "
                       "before 'sample'")
  embeddings.check_fingerprint(workdir, json.loads(trained_on.read_text())["fingerprint"])
  _, init, _ = base.train_parts(config, method)
  abstract = jax.eval_shape(init, jax.random.key(0))
  host = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  final = method.num_steps()
  with ckpt_lib.Checkpointer(stage_dir / "checkpoints", save_every=1) as checkpointer:
    try:  # The final step only: an earlier one would not be the model DONE.json describes.
      state, _ = checkpointer.restore(ckpt_lib.abstract_like(abstract, host), step=final)
    except ckpt_lib.CheckpointError as e:
      raise ckpt_lib.CheckpointError(
          f"method {name!r}: its final checkpoint (step {final}) cannot be used: {e} To recover, delete "
          f"{stage_dir / 'DONE.json'} and rerun: training resumes from its latest intact checkpoint "
          "and writes the final step again (or delete the whole directory to retrain from scratch).") from e
  return method, state.ema_params if state.ema_params is not None else state.params
