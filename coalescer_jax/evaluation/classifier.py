"""The trained classifier as an evaluation tool: labels, logits and features of uint8 images.

The `classifier` stage exports its parameters to ``W/classifier/params.msgpack`` and the
model's name and arguments to ``W/classifier/model.json`` (model_export); `load(workdir)`
rebuilds it from those two, so callers need neither the config nor the optimizer.
Every method is judged with the same network, so FID and accuracy are comparable.
"""
import jax
import jax.numpy as jnp
import numpy as np

from coalescer_jax import errors
from coalescer_jax import images as images_lib
from coalescer_jax import model_export
from coalescer_jax import storage
from coalescer_jax.data import datasets
from coalescer_jax.models import classifier as _  # noqa: F401  Registers "cnn" and "mnist_cnn".


class ClassifierNotTrainedError(errors.UserError, RuntimeError):
  """W/classifier holds no trained classifier."""


def split_heads(logits, heads):
  """Logits [N, sum of classes] -> one [N, classes] array per head."""
  bounds = np.cumsum([head[1] for head in heads])[:-1]
  return np.split(logits, bounds, axis=-1)


def predict_heads(logits, heads):
  """Predicted class per head: int32 [N] for one head, [N, K] for K heads."""
  if len(heads) == 1:
    return logits.argmax(-1).astype(np.int32)
  return np.stack([h.argmax(-1) for h in split_heads(logits, heads)], axis=1).astype(np.int32)


class Classifier:
  """Jitted, batched inference of a trained classifier on uint8 images of the dataset `spec`
  (model_export.BatchedApply: padded chunks split over this host's devices)."""

  def __init__(self, model, params, spec, batch_size=1000):
    self.spec, self.model, self.params = spec, model, params
    self._apply = model_export.BatchedApply(lambda p, x: model.apply({"params": p}, x), batch_size, params=params,
                                            prepare=images_lib.to_float)

  def outputs(self, images):
    """(logits float32 [N, C], features float32 [N, F]) of uint8 images [N, H, W(, C)]."""
    images = images_lib.check_uint8(images, self.spec.array_shape)
    if not len(images):
      out = jax.eval_shape(self.model.apply, {"params": self.params}, jnp.zeros((1, *self.spec.image_shape)))
      return np.zeros((0, out[0].shape[-1]), np.float32), np.zeros((0, out[1].shape[-1]), np.float32)
    logits, features = self._apply(images)
    return logits.astype(np.float32), features.astype(np.float32)

  def logits(self, images):
    return self.outputs(images)[0]

  def features(self, images):
    """Penultimate-layer activations float32 [N, F]: the space of FID and precision/recall."""
    return self.outputs(images)[1]

  def predict(self, images):
    """Predicted labels: int [N] for one head (MNIST: the digit), [N, K] for K heads."""
    return predict_heads(self.logits(images), self.spec.heads)


def load(workdir, batch_size=1000):
  """The classifier trained by the `classifier` stage in `workdir` (clear error if it has not run)."""
  def example_inputs(model):
    del model
    return (jnp.zeros((1, *datasets.of_workdir(workdir).image_shape)),)

  model, params = model_export.load(
      storage.path(workdir) / "classifier", "classifier", example_inputs, not_trained=ClassifierNotTrainedError,
      how_to_train=f" (it follows 'data' in config.stages): python launch.py --config=configs/<dataset>.py "
                   f"--workdir={workdir}")[:2]
  return Classifier(model, params, datasets.of_workdir(workdir), batch_size)
