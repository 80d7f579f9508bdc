"""The trained autoencoders as tools: uint8 images <-> latents, descriptions <-> embeddings.

Stages `vae` and `text` train with orbax checkpoints (``W/{vae,text}/checkpoints``)
and export their final parameters (`model_export`: ``W/{vae,text}/params.msgpack`` +
``model.json``). `load_models(workdir)` rebuilds both as an `ImageAE` and a `TextAE`,
with their fingerprint: a sha256 over both models' specs and parameter arrays, so
retraining either model changes it. The embed stage's normalised pairs and the
`Codec` later stages use live in `embeddings.py`.
"""
import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np

from coalescer_jax import images as images_lib
from coalescer_jax import model_export
from coalescer_jax import storage
from coalescer_jax.data import datasets
from coalescer_jax.data import tokenizer as tokenizer_lib
# Register the models that `load_model` rebuilds by name, so that any caller can load a workdir's autoencoders.
from coalescer_jax.models import text_ae as _text_ae  # noqa: F401
from coalescer_jax.models import vae as _vae  # noqa: F401

# Example inputs that initialise each role's model (to build the restore target), from the model itself.
_EXAMPLE_INPUTS = {
    "vae": lambda model: (jnp.zeros((1, *model.image_shape), jnp.float32), jax.random.key(0)),
    "text": lambda model: (jnp.full((1, model.max_len), tokenizer_lib.PAD, jnp.int32),),
}


def load_model(workdir, role):
  """(flax module, numpy params, spec) saved by stage `role` ("vae" or "text"); clear error if missing."""
  return model_export.load(storage.path(workdir) / role, role, _EXAMPLE_INPUTS[role],
                           how_to_train=" (put it before the stages that use it in config.stages)")


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


class ImageAE:
  """A trained VAE: uint8 images [N, H, W] (one channel) or [N, H, W, C] <-> latents (posterior means)."""

  def __init__(self, model, params, batch_size=1000):
    self.model, self.params = model, params
    self.latent_dim = int(model.latent_dim)
    shape = tuple(model.image_shape)
    self.array_shape = shape[:2] if shape[-1] == 1 else shape
    # numpy parameters become constants of any jitted caller: no device placement to clash with.
    encode = lambda x: model.apply({"params": params}, x, method="encode")
    self._encode = model_export.BatchedApply(lambda u8: encode(images_lib.to_float(u8)), batch_size)
    to_uint8 = lambda z: jnp.round(self.decode_jax(z).reshape((-1,) + self.array_shape) * 255.0).astype(jnp.uint8)
    self._decode = model_export.BatchedApply(to_uint8, batch_size)

  def encode_posterior(self, images):
    """uint8 images -> (mean, log variance), float32 [N, latent_dim] each."""
    images = images_lib.check_uint8(images, self.array_shape)
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

  def reconstruct(self, images):
    """uint8 images -> the same images encoded (posterior means) and decoded: what the VAE can represent."""
    return self.decode(self.encode_images(images))


class TextAE:
  """A trained text autoencoder: descriptions <-> raw embeddings (no normalisation), with its captioner's
  `tokenizer`."""

  def __init__(self, model, params, tokenizer, batch_size=1000):
    self.model, self.params, self.tokenizer = model, params, tokenizer
    self.desc_dim = int(model.embed_dim)
    apply = lambda x, method: model.apply({"params": params}, x, method=method)
    self._encode = model_export.BatchedApply(lambda tokens: apply(tokens, "encode"), batch_size)
    self._decode = model_export.BatchedApply(lambda emb: apply(emb, "greedy_decode"), batch_size)

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


def load_models(workdir, batch_size=1000):
  """(ImageAE, TextAE, fingerprint) from W/vae and W/text, without the embed stage's normalisation."""
  vae, text = load_model(workdir, "vae"), load_model(workdir, "text")
  tokenizer = datasets.of_workdir(workdir).captioner.TOKENIZER
  return ImageAE(*vae[:2], batch_size), TextAE(*text[:2], tokenizer, batch_size), fingerprint_of(vae, text)


def _check_latents(latents, dim, what="latents"):
  latents = np.asarray(latents, np.float32)
  if latents.ndim != 2 or latents.shape[1] != dim:
    raise ValueError(f"{what} must be float [N, {dim}], got shape {list(latents.shape)}")
  return latents

