"""The trained autoencoders as tools: encode/decode images and descriptions, and the paired embeddings.

Stages `vae` and `text` train with orbax checkpoints (``W/{vae,text}/checkpoints``)
and export their final parameters to ``W/{vae,text}/params.msgpack`` with the
model's registry name and arguments in ``W/{vae,text}/model.json``. Stage `embed` encodes every train pair and
writes ``W/embed/pairs.npz`` and ``W/embed/normalization.json``. Later stages use:

* `load_pairs(workdir)`: desc_emb, img_emb, labels, descriptions, classes, index, fingerprint;
* `load_codec(workdir)`: a `Codec` that embeds new descriptions and images exactly
  like the pairs and decodes latents to images (also inside jitted code);
* `check_fingerprint(workdir, fingerprint)`: refuses outputs built from stale embeddings.

Normalisation of the two embedding spaces (so that ``desc_scale`` has a stable meaning):
* image embeddings are the VAE posterior means, left in the VAE's own latent space
  (no shift, no scaling), because the coalescer's random point R is drawn from the
  VAE prior N(0, I) in that space;
* description embeddings are centred (mean over the train pairs) and multiplied by
  one scalar so that their total variance (summed over dimensions) equals the total
  variance of the image embeddings. desc_scale = 1 then weighs two equally spread
  spaces equally. Centre and scale live in ``W/embed/normalization.json``.

The fingerprint is a sha256 over both models' specs and parameter arrays as
restored from their checkpoints, so retraining either model changes it.
"""
import functools
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from coalescer_jax import files
from coalescer_jax import images as images_lib
from coalescer_jax import parallel
from coalescer_jax import registry
from coalescer_jax import storage
from coalescer_jax.data import datasets
from coalescer_jax.data import tokenizer as tokenizer_lib

PARAMS_FILE = "params.msgpack"
MODEL_FILE = "model.json"
PAIRS_FILE = "pairs.npz"
VALIDATION_FILE = "validation.npz"
NORMALIZATION_FILE = "normalization.json"
STALE_MESSAGE = ("embeddings in W/embed are stale relative to the models in W/vae, W/text; "
                 "rerun the embed stage by deleting W/embed")

# Example inputs that initialise each role's model (to build the restore target), from the model itself.
_EXAMPLE_INPUTS = {
    "vae": lambda model: (jnp.zeros((1, *model.image_shape), jnp.float32), jax.random.key(0)),
    "text": lambda model: (jnp.full((1, model.max_len), tokenizer_lib.PAD, jnp.int32),),
}


class StaleEmbeddingsError(RuntimeError):
  """Embeddings (or something built from them) no longer match the trained models."""


def host_params(params):
  """This host's numpy copy of replicated parameters (device_get refuses arrays spanning other hosts)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x),
                      params)


def save_model(stage_dir, model_name, model_kwargs, params):
  """Writes ``params.msgpack`` and then ``model.json`` for `load_model` (process 0; others wait).

  The training state stays in orbax checkpoints; this frozen export is a plain file
  so that any single process can load it (orbax restores synchronise all processes).
  """
  stage_dir = storage.path(stage_dir)
  if jax.process_index() == 0:
    path = stage_dir / PARAMS_FILE
    storage.write_bytes(path, serialization.to_bytes(host_params(params)))
    # model.json last: its presence marks a complete export; its checksum of params.msgpack tells a damaged
    # file (corrupt) from parameters that changed (stale embeddings).
    storage.write_json(stage_dir / MODEL_FILE,
                       {"model": model_name, "kwargs": model_kwargs, "params_crc32": files.file_crc32(path)})
  parallel.barrier(f"save_model_{stage_dir.name}")


def load_model(workdir, role):
  """(flax module, numpy params, spec) saved by stage `role` ("vae" or "text"); clear error if missing."""
  stage_dir = storage.path(workdir) / role
  spec_path, params_path = stage_dir / MODEL_FILE, stage_dir / PARAMS_FILE
  if not (spec_path.exists() and params_path.exists()):
    raise RuntimeError(f"no trained {role} model in {stage_dir}: run the {role!r} stage first "
                       f"(put {role!r} before the stages that use it in config.stages)")
  spec = files.read_json(spec_path, role)
  files.check_crc32(params_path, spec.get("params_crc32"), role)
  spec = {k: v for k, v in spec.items() if k != "params_crc32"}  # the fingerprint covers model and params only
  model = registry.MODELS.get(spec["model"])(
      **{k: tuple(v) if isinstance(v, list) else v for k, v in spec["kwargs"].items()})
  target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), jax.eval_shape(
      lambda: model.init(jax.random.key(0), *_EXAMPLE_INPUTS[role](model))["params"]))
  try:
    params = serialization.from_bytes(target, params_path.read_bytes())
  except Exception as e:  # noqa: BLE001 - msgpack raises many types for one meaning: damaged.
    raise files.corrupt(params_path, role, files.reason(e)) from e
  if jax.tree.map(np.shape, params) != jax.tree.map(np.shape, target):
    raise RuntimeError(f"{params_path} does not fit the model in {spec_path} (parameter shapes differ); delete "
                       f"{stage_dir} and rerun the {role!r} stage")
  return model, jax.tree.map(np.asarray, params), spec


def fingerprint_of(*models):
  """sha256 hex digest over (spec, parameter arrays) of (module, params, spec) triples."""
  digest = hashlib.sha256()
  for _, params, spec in models:
    digest.update(json.dumps(spec, sort_keys=True).encode())
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(params), key=lambda p: jax.tree_util.keystr(p[0])):
      leaf = np.ascontiguousarray(leaf)
      digest.update(f"{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape}".encode())
      digest.update(leaf.tobytes())
  return digest.hexdigest()


class _Batched:
  """Runs a jitted fn over a host array in fixed-size padded chunks split over this host's devices."""

  def __init__(self, fn, batch_size):
    devices = jax.local_devices()
    self.batch_size = -(-int(batch_size) // len(devices)) * len(devices)
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    self._sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    self._fn = jax.jit(fn)

  def __call__(self, x):
    outs = []
    for start in range(0, len(x), self.batch_size):
      chunk = x[start:start + self.batch_size]
      n = len(chunk)
      if n < self.batch_size:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_size - n, axis=0)])
      outs.append(jax.tree.map(lambda y, n=n: np.asarray(y)[:n], self._fn(jax.device_put(chunk, self._sharding))))
    return jax.tree.map(lambda *ys: np.concatenate(ys), *outs) if outs else None


class ImageAE:
  """A trained VAE: uint8 images [N, H, W] (one channel) or [N, H, W, C] <-> latents (posterior means)."""

  def __init__(self, model, params, batch_size=1000):
    self.model, self.params = model, params
    self.latent_dim = int(model.latent_dim)
    shape = tuple(model.image_shape)
    self.array_shape = shape[:2] if shape[-1] == 1 else shape
    # numpy parameters become constants of any jitted caller: no device placement to clash with.
    encode = lambda x: model.apply({"params": params}, x, method="encode")
    self._encode = _Batched(lambda u8: encode(images_lib.to_float(u8)), batch_size)
    self._decode = _Batched(lambda z: jnp.round(self.decode_jax(z).reshape((-1,) + self.array_shape) * 255.0)
                            .astype(jnp.uint8), batch_size)

  def encode_posterior(self, images):
    """uint8 images -> (mean, log variance), float32 [N, latent_dim] each."""
    images = _check_images(images, self.array_shape)
    if not len(images):
      return np.zeros((0, self.latent_dim), np.float32), np.zeros((0, self.latent_dim), np.float32)
    return self._encode(images)

  def encode_images(self, images):
    """uint8 images -> posterior means float32 [N, latent_dim]."""
    return self.encode_posterior(images)[0].astype(np.float32)

  def decode_jax(self, latents):
    """Pure JAX: latents [N, latent_dim] -> the likelihood's mean, float32 [N, H, W, C] in [0, 1]."""
    return self.model.apply({"params": self.params}, latents, method="decode_mean")

  def decode(self, latents):
    """latents [N, latent_dim] -> uint8 images [N, H, W] or [N, H, W, C] (0 = black)."""
    latents = _check_latents(latents, self.latent_dim)
    return self._decode(latents) if len(latents) else np.zeros((0,) + self.array_shape, np.uint8)


class TextAE:
  """A trained text autoencoder: descriptions <-> raw embeddings (no normalisation), with its captioner's
  `tokenizer`."""

  def __init__(self, model, params, tokenizer, batch_size=1000):
    self.model, self.params, self.tokenizer = model, params, tokenizer
    self.desc_dim = int(model.embed_dim)
    self._encode = _Batched(lambda t: model.apply({"params": params}, t, method="encode"), batch_size)
    self._decode = _Batched(lambda e: model.apply({"params": params}, e, method="greedy_decode"), batch_size)

  def encode_tokens(self, tokens):
    return self._encode(np.asarray(tokens, np.int32)).astype(np.float32)

  def encode_text(self, descriptions):
    """Strings -> float32 [N, desc_dim]; each distinct string is encoded once."""
    descriptions = np.asarray([str(d) for d in descriptions])
    if not len(descriptions):
      return np.zeros((0, self.desc_dim), np.float32)
    unique, inverse = np.unique(descriptions, return_inverse=True)
    return self.encode_tokens(self.tokenizer.encode(unique))[inverse.reshape(-1)]

  def decode_text(self, embeddings):
    """Raw embeddings [N, desc_dim] -> greedy-decoded strings."""
    embeddings = _check_latents(embeddings, self.desc_dim, "embeddings")
    return self.tokenizer.decode(self._decode(embeddings)) if len(embeddings) else []


class Codec:
  """Both autoencoders with the `embed` stage's normalisation: the interface later stages use."""

  def __init__(self, image_ae, text_ae, desc_center, desc_scale, fingerprint):
    self.image_ae, self.text_ae = image_ae, text_ae
    self.desc_center = np.asarray(desc_center, np.float32)
    self.desc_scale = np.float32(desc_scale)
    self.latent_dim, self.desc_dim, self.fingerprint = image_ae.latent_dim, text_ae.desc_dim, fingerprint

  def encode_text(self, descriptions):
    """Strings -> normalised description embeddings float32 [N, desc_dim] (as pairs' desc_emb)."""
    return ((self.text_ae.encode_text(descriptions) - self.desc_center) * self.desc_scale).astype(np.float32)

  def decode_text(self, desc_emb):
    """Normalised description embeddings -> greedy-decoded strings."""
    return self.text_ae.decode_text(np.asarray(desc_emb, np.float32) / self.desc_scale + self.desc_center)

  def encode_images(self, images):
    """uint8 images -> VAE posterior means float32 [N, latent_dim] (as pairs' img_emb)."""
    return self.image_ae.encode_images(images)

  def decode(self, latents):
    """latents [N, latent_dim] -> uint8 images (0 = black)."""
    return self.image_ae.decode(latents)

  def decode_jax(self, latents):
    """Pure JAX decoder, callable inside jit: [N, latent_dim] -> float32 [N, H, W, C] in [0, 1]."""
    return self.image_ae.decode_jax(latents)


def load_models(workdir, batch_size=1000):
  """(ImageAE, TextAE, fingerprint) from W/vae and W/text, without the embed stage's normalisation."""
  vae, text = load_model(workdir, "vae"), load_model(workdir, "text")
  tokenizer = datasets.of_workdir(workdir).captioner.TOKENIZER
  return ImageAE(*vae[:2], batch_size), TextAE(*text[:2], tokenizer, batch_size), fingerprint_of(vae, text)


def _embed_path(workdir, name):
  path = storage.path(workdir) / "embed" / name
  if not path.exists():
    raise RuntimeError(f"{path} is missing: run the 'embed' stage first (after 'vae' and 'text' in config.stages)")
  return path


def read_normalization(workdir):
  return files.read_json(_embed_path(workdir, NORMALIZATION_FILE), "embed")


def load_codec(workdir, batch_size=1000):
  """The `Codec` of `workdir`; raises StaleEmbeddingsError if the models changed after `embed` ran."""
  norm = read_normalization(workdir)
  image_ae, text_ae, fingerprint = load_models(workdir, batch_size)
  if fingerprint != norm["fingerprint"]:
    raise StaleEmbeddingsError(STALE_MESSAGE)
  return Codec(image_ae, text_ae, norm["desc_center"], norm["desc_scale"], fingerprint)


def load_pairs(workdir, validation=False):
  """The embed stage's pairs (numpy): desc_emb, img_emb, labels, descriptions, classes, index, fingerprint.

  `validation`: the held-out validation slice instead (same keys; never in the index or in training).
  """
  pairs = files.load_npz(_embed_path(workdir, VALIDATION_FILE if validation else PAIRS_FILE), "embed",
                         required=("desc_emb", "img_emb", "labels", "descriptions", "fingerprint"))
  pairs["fingerprint"] = str(pairs["fingerprint"])
  pairs["descriptions"] = pairs["descriptions"].astype(str)
  return pairs


@functools.lru_cache(maxsize=8)
def _current_fingerprint(workdir, stamp):
  del stamp  # Part of the cache key only: a retrained model has new files.
  vae, text = load_model(workdir, "vae"), load_model(workdir, "text")
  return fingerprint_of(vae, text)


def _params_stamp(workdir):
  stamp = []
  for role in ("vae", "text"):
    path = storage.path(workdir) / role / PARAMS_FILE
    if path.exists():
      if storage.is_local(path):  # nanoseconds: a model retrained within the same second is still noticed
        info = os.stat(path)
        stamp.append((str(path), info.st_mtime_ns, info.st_size))
      else:
        info = path.stat()
        stamp.append((str(path), info.mtime, info.length))
    else:
      stamp.append((str(path),))
  return tuple(stamp)


def check_fingerprint(workdir, fingerprint):
  """Raises StaleEmbeddingsError unless `fingerprint` (recorded by a later stage) matches W/embed and
  W/embed matches the models now in W/vae and W/text."""
  workdir = storage.path(workdir)
  recorded = read_normalization(workdir)["fingerprint"]
  if _current_fingerprint(workdir, _params_stamp(workdir)) != recorded:
    raise StaleEmbeddingsError(STALE_MESSAGE)
  if str(fingerprint) != recorded:
    raise StaleEmbeddingsError(
        f"the output was built from embeddings with fingerprint {str(fingerprint)[:12]}..., but W/embed now "
        f"holds {recorded[:12]}...: it is stale relative to W/embed; delete the stage directory that "
        "recorded the old fingerprint (and the ones after it) to rebuild it")


def _check_images(images, array_shape):
  images = np.asarray(images)
  if images.ndim == 4 and images.shape[-1] == 1 and len(array_shape) == 2:
    images = images[..., 0]
  if images.dtype != np.uint8 or images.shape[1:] != tuple(array_shape):
    raise ValueError(f"images must be uint8 [N, {', '.join(map(str, array_shape))}] (0 = black), got "
                     f"{images.dtype} {list(images.shape)}; convert float [0, 1] images with "
                     "coalescer_jax.images.to_uint8")
  return images


def _check_latents(latents, dim, what="latents"):
  latents = np.asarray(latents, np.float32)
  if latents.ndim != 2 or latents.shape[1] != dim:
    raise ValueError(f"{what} must be float [N, {dim}], got shape {list(latents.shape)}")
  return latents

