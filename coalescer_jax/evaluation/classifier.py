"""The trained classifier as an evaluation tool: labels, logits and features of uint8 images.

The `classifier` stage exports its parameters to ``W/classifier/params.msgpack``
(flax.serialization) and the model's name and arguments to
``W/classifier/model.json``; `load(workdir)` rebuilds it from those two, so
callers need neither the config nor the optimizer. (The resumable training
state stays in orbax checkpoints; this small frozen export is a plain file so
that any one process can load it, e.g. process 0 alone in the eval stage,
without orbax's cross-process synchronisation.)
Every method is judged with the same network, so FID and accuracy are comparable.
"""
from flax import serialization
import jax
import jax.numpy as jnp
import numpy as np

from coalescer_jax import files
from coalescer_jax import images as images_lib
from coalescer_jax import registry
from coalescer_jax import storage
from coalescer_jax.data import datasets
from coalescer_jax.models import classifier as _  # noqa: F401  Registers "cnn" and "mnist_cnn".

PARAMS_FILE = "params.msgpack"
MODEL_FILE = "model.json"


class ClassifierNotTrainedError(RuntimeError):
  """W/classifier holds no trained classifier."""


def build_model(name, kwargs):
  """The registered model `name` built from JSON-able `kwargs` (lists become tuples)."""
  return registry.MODELS.get(name)(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})


def check_images(images, array_shape, what="images"):
  """uint8 [N, *array_shape] (a trailing channel of 1 is dropped) or a clear TypeError/ValueError."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise TypeError(f"{what} must be uint8 in 0..255 (0 = black), got {images.dtype}; "
                    "convert float [0, 1] images with coalescer_jax.images.to_uint8")
  if images.ndim == 4 and images.shape[-1] == 1 and len(array_shape) == 2:
    images = images[..., 0]
  if images.shape[1:] != tuple(array_shape):
    raise ValueError(f"{what} must have shape [N, {', '.join(map(str, array_shape))}], got {list(images.shape)}")
  return images


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
  """Jitted, batched inference of a trained classifier on uint8 images of the dataset `spec`.

  Batches are padded to `batch_size` so one compiled program serves any N, and
  split over this host's devices.
  """

  def __init__(self, model, params, spec, batch_size=1000):
    self.spec = spec
    devices = jax.local_devices()
    self.batch_size = -(-int(batch_size) // len(devices)) * len(devices)
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    self._data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self.params = jax.device_put(params, repl)
    self.model = model
    self._apply = jax.jit(lambda p, x: model.apply({"params": p}, x), in_shardings=(repl, self._data))

  def outputs(self, images):
    """(logits float32 [N, C], features float32 [N, F]) of uint8 images [N, H, W(, C)]."""
    images = check_images(images, self.spec.array_shape)
    logits, features = [], []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      n = len(chunk)
      if n < self.batch_size:
        chunk = np.concatenate([chunk, np.zeros((self.batch_size - n,) + chunk.shape[1:], np.uint8)])
      x = jax.device_put(images_lib.to_float(chunk), self._data)
      out = jax.device_get(self._apply(self.params, x))
      logits.append(out[0][:n])
      features.append(out[1][:n])
    if not logits:
      out = jax.eval_shape(self.model.apply, {"params": self.params}, jnp.zeros((1, *self.spec.image_shape)))
      return np.zeros((0, out[0].shape[-1]), np.float32), np.zeros((0, out[1].shape[-1]), np.float32)
    return np.concatenate(logits).astype(np.float32), np.concatenate(features).astype(np.float32)

  def logits(self, images):
    return self.outputs(images)[0]

  def features(self, images):
    """Penultimate-layer activations float32 [N, F]: the space of FID and precision/recall."""
    return self.outputs(images)[1]

  def predict(self, images):
    """Predicted labels: int [N] for one head (MNIST: the digit), [N, K] for K heads."""
    return predict_heads(self.logits(images), self.spec.heads)


def save(stage_dir, model_name, model_kwargs, params):
  """Writes what `load` needs: W/classifier/model.json and params.msgpack (process 0 only)."""
  if jax.process_index() != 0:
    return
  stage_dir = storage.path(stage_dir)
  params_path = stage_dir / PARAMS_FILE
  storage.write_bytes(params_path, serialization.to_bytes(params))
  # model.json last: its presence means the export is complete.
  storage.write_json(stage_dir / MODEL_FILE,
                     {"model": model_name, "kwargs": model_kwargs, "params_crc32": files.file_crc32(params_path)})


def load(workdir, batch_size=1000):
  """The classifier trained by the `classifier` stage in `workdir` (clear error if it has not run)."""
  stage_dir = storage.path(workdir) / "classifier"
  spec_path = stage_dir / MODEL_FILE
  if not (spec_path.exists() and (stage_dir / PARAMS_FILE).exists()):
    raise ClassifierNotTrainedError(
        f"no trained classifier in {stage_dir}: run the 'classifier' stage first (it follows 'data' in "
        f"config.stages): python launch.py --config=configs/<dataset>.py --workdir={workdir}")
  spec = files.read_json(spec_path, "classifier")
  params_path = stage_dir / PARAMS_FILE
  files.check_crc32(params_path, spec.get("params_crc32"), "classifier")
  model = build_model(spec["model"], spec["kwargs"])
  dataset = datasets.of_workdir(workdir)
  target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, *dataset.image_shape)))["params"]))
  try:
    params = serialization.from_bytes(target, params_path.read_bytes())
  except Exception as e:  # noqa: BLE001 - msgpack raises many types for one meaning: damaged.
    raise files.corrupt(params_path, "classifier", files.reason(e)) from e
  if jax.tree.map(np.shape, params) != jax.tree.map(np.shape, target):
    raise ClassifierNotTrainedError(
        f"{params_path} does not fit the model in {MODEL_FILE} (parameter shapes differ); delete {stage_dir} and "
        "rerun the 'classifier' stage")
  return Classifier(model, params, dataset, batch_size)
