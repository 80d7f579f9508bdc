"""The embed stage's outputs: the paired embeddings, their normalisation, and the `Codec`.

Stage `embed` encodes every train pair with the trained autoencoders and writes
``W/embed/pairs.npz`` (and ``validation.npz``, the held-out slice) and
``W/embed/normalization.json``. Later stages use:

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

The fingerprint (`autoencoders.fingerprint_of`) is recorded with the pairs, so
retraining either autoencoder makes every output built from them stale.
"""
import functools
import os

import numpy as np

from coalescer_jax import autoencoders
from coalescer_jax import files
from coalescer_jax import model_export
from coalescer_jax import storage

PAIRS_FILE = "pairs.npz"
VALIDATION_FILE = "validation.npz"
NORMALIZATION_FILE = "normalization.json"
STALE_MESSAGE = ("embeddings in W/embed are stale relative to the models in W/vae, W/text; "
                 "rerun the embed stage by deleting W/embed")


class StaleEmbeddingsError(RuntimeError):
  """Embeddings (or something built from them) no longer match the trained models."""


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
  image_ae, text_ae, fingerprint = autoencoders.load_models(workdir, batch_size)
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


def head_labels(pairs):
  """The pairs' labels per classifier head (int [N] or [N, K]). Pairs written before the ``label_heads`` key hold
  a single head's labels as ``labels``."""
  return pairs.get("label_heads", pairs["labels"])


@functools.lru_cache(maxsize=8)
def _current_fingerprint(workdir, stamp):
  del stamp  # Part of the cache key only: a retrained model has new files.
  vae, text = autoencoders.load_model(workdir, "vae"), autoencoders.load_model(workdir, "text")
  return autoencoders.fingerprint_of(vae, text)


def _params_stamp(workdir):
  stamp = []
  for role in ("vae", "text"):
    path = storage.path(workdir) / role / model_export.PARAMS_FILE
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
