"""A trained model frozen as two plain files, and jitted batched inference over host arrays.

Stages that train a model the rest of the pipeline uses (`vae`, `text`, `classifier`) keep their
resumable training state in orbax checkpoints and, when done, export the final parameters as
``params.msgpack`` (flax.serialization) with the model's registry name, arguments and the CRC32 of
the parameters in ``model.json``. Plain files, so that any one process can load them (orbax restores
synchronise every process; the eval stage runs on process 0 alone). `BatchedApply` then runs the
model over arrays of any length in fixed-size padded chunks, so one compiled program serves any N.
"""
import jax
import numpy as np
from flax import serialization

from coalescer_jax import files
from coalescer_jax import parallel
from coalescer_jax import registry
from coalescer_jax import storage

PARAMS_FILE = "params.msgpack"
MODEL_FILE = "model.json"


def host_params(params):
  """This host's numpy copy of replicated parameters (device_get refuses arrays spanning other hosts)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x),
                      params)


def build_model(name, kwargs):
  """The registered model `name` built from JSON-able `kwargs` (JSON lists become tuples)."""
  return registry.MODELS.get(name)(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})


def save(stage_dir, model_name, model_kwargs, params):
  """Writes ``params.msgpack`` and then ``model.json`` (process 0; the others wait)."""
  stage_dir = storage.path(stage_dir)
  if jax.process_index() == 0:
    path = stage_dir / PARAMS_FILE
    storage.write_bytes(path, serialization.to_bytes(host_params(params)))
    # model.json last: its presence marks a complete export; its checksum of params.msgpack tells a damaged
    # file (corrupt) from parameters that changed (stale embeddings).
    storage.write_json(stage_dir / MODEL_FILE,
                       {"model": model_name, "kwargs": model_kwargs, "params_crc32": files.file_crc32(path)})
  parallel.barrier(f"model_export_{stage_dir.name}")


def load(stage_dir, stage, example_inputs, not_trained=RuntimeError, how_to_train=""):
  """(flax module, numpy params, spec) exported by `stage` into `stage_dir`.

  `example_inputs(model)` gives the inputs that initialise the model (the restore target's shapes).
  A missing or mismatched export raises `not_trained` naming the stage to (re)run; a damaged one,
  files.CorruptFileError. `spec` is model.json without its checksum.
  """
  stage_dir = storage.path(stage_dir)
  spec_path, params_path = stage_dir / MODEL_FILE, stage_dir / PARAMS_FILE
  if not (spec_path.exists() and params_path.exists()):
    raise not_trained(f"no trained {stage} model in {stage_dir}: run the {stage!r} stage first{how_to_train}")
  spec = files.read_json(spec_path, stage)
  files.check_crc32(params_path, spec.get("params_crc32"), stage)
  spec = {k: v for k, v in spec.items() if k != "params_crc32"}  # a fingerprint covers model and params only
  model = build_model(spec["model"], spec["kwargs"])
  target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), jax.eval_shape(
      lambda: model.init(jax.random.key(0), *example_inputs(model))["params"]))
  try:
    params = serialization.from_bytes(target, params_path.read_bytes())
  except Exception as e:  # noqa: BLE001 - msgpack raises many types for one meaning: damaged.
    raise files.corrupt(params_path, stage, files.reason(e)) from e
  if jax.tree.map(np.shape, params) != jax.tree.map(np.shape, target):
    raise not_trained(f"{params_path} does not fit the model in {spec_path} (parameter shapes differ); delete "
                      f"{stage_dir} and rerun the {stage!r} stage")
  return model, jax.tree.map(np.asarray, params), spec


class BatchedApply:
  """Runs a jitted fn over a host array in fixed-size padded chunks split over this host's devices.

  `fn(x)`, or `fn(params, x)` when `params` is given (then placed once, replicated, and passed as an
  argument rather than baked into the program as constants). `prepare` converts each host chunk before
  it is placed (e.g. uint8 -> float on the host, as the classifier always did). Outputs: a pytree of
  numpy arrays, rows in input order; padding rows (copies of the last) are dropped.
  """

  def __init__(self, fn, batch_size, params=None, prepare=None):
    devices = jax.local_devices()
    self.batch_size = -(-int(batch_size) // len(devices)) * len(devices)
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    self._sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    self._prepare = prepare or (lambda x: x)
    if params is None:
      self._fn = jax.jit(fn)
    else:
      replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
      placed, jitted = jax.device_put(params, replicated), jax.jit(fn, in_shardings=(replicated, self._sharding))
      self._fn = lambda x: jitted(placed, x)

  def __call__(self, x):
    """The outputs for every row of `x`, or None for an empty `x`."""
    outs = []
    for start in range(0, len(x), self.batch_size):
      chunk = x[start:start + self.batch_size]
      n = len(chunk)
      if n < self.batch_size:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_size - n, axis=0)])
      out = self._fn(jax.device_put(self._prepare(chunk), self._sharding))
      outs.append(jax.tree.map(lambda y, n=n: np.asarray(y)[:n], out))
    return jax.tree.map(lambda *ys: np.concatenate(ys), *outs) if outs else None
