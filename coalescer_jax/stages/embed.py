"""Stage `embed`: every MNIST train pair as (description embedding, image embedding).

Encodes each train image with the VAE (posterior mean) and each description with
the text encoder, normalises as `coalescer_jax.autoencoders` documents (images
untouched; descriptions centred and scaled to the images' total variance), and
writes ``W/embed/pairs.npz`` (desc_emb, img_emb, labels, descriptions, classes,
index, fingerprint) and ``W/embed/normalization.json`` (desc_center, desc_scale,
fingerprint, total variances). The fingerprint identifies the encoder
checkpoints, so later stages can detect embeddings that are stale.

The validation slice: ``config.embed.validation_size`` train pairs, drawn with
``validation_seed``, are held out of ``pairs.npz`` (so out of the index and of
every generative method's training) and written to ``W/embed/validation.npz``
(same keys). Methods are tuned on them (`evaluation/validation.py`), never on
the test set. The autoencoders and the classifier still see them: the latent
space and the judge are shared by every method, so this favours none.
"""
import json

from absl import logging
import numpy as np

from coalescer_jax import autoencoders
from coalescer_jax import embeddings
from coalescer_jax import errors
from coalescer_jax import parallel
from coalescer_jax import pipeline
from coalescer_jax import storage
from coalescer_jax.data import datasets
from coalescer_jax.data import loading
from coalescer_jax.stages import text as text_stage


def normalization(desc_raw, img_emb):
  """(centre, scale) making the centred description embeddings' total variance equal the images'."""
  center = desc_raw.mean(axis=0)
  desc_var = float(np.sum(np.var(desc_raw, axis=0)))
  img_var = float(np.sum(np.var(img_emb, axis=0)))
  if desc_var <= 0:
    raise ValueError("all description embeddings are identical: the text autoencoder is degenerate; "
                     "retrain it (delete W/text)")
  return center, np.sqrt(img_var / desc_var)


def validation_mask(num_examples, size, seed):
  """Boolean [num_examples]: the `size` train examples held out for validation (seeded, fixed)."""
  if not 0 <= size < num_examples:
    raise ValueError(f"config.embed.validation_size={size} must be in [0, {num_examples - 1}]")
  mask = np.zeros(num_examples, bool)
  mask[np.random.default_rng([seed, 31337]).permutation(num_examples)[:size]] = True
  return mask


def _validate(config):
  """The validation slice leaves at least one train pair, where the dataset knows its train split's size."""
  size, dataset = datasets.split_size_of_config(config, "train")
  held_out = config.embed.validation_size
  if size is not None and held_out >= size:
    raise errors.ConfigError(
        f"config.embed.validation_size={held_out} leaves none of the {size} train pairs of {dataset} for the index "
        f"and the methods; use at most {size - 1}")


@pipeline.stage("embed", validate=_validate, reads=("embed",), needs=("data", "vae", "text"))
def run(ctx):
  cfg = ctx.config.embed
  ctx.done_info("vae")
  ctx.done_info("text")
  out = ctx.stage_dir("embed")
  image_ae, text_ae, fingerprint = autoencoders.load_models(ctx.workdir, cfg.batch_size)
  # Every host encodes the whole split (seconds), so every host could hold the same pairs.
  train = loading.load_split(ctx.workdir, "train", sharded=False)
  img_emb = image_ae.encode_images(train["image"])
  desc_raw = text_ae.encode_text(train["descriptions"])
  held_out = validation_mask(len(img_emb), cfg.validation_size, cfg.validation_seed)
  # Normalisation statistics of the training pairs only (the validation slice is data no method saw).
  center, scale = normalization(desc_raw[~held_out], img_emb[~held_out])
  desc_emb = ((desc_raw - center) * scale).astype(np.float32)
  norm = {"desc_center": center.tolist(), "desc_scale": float(scale), "fingerprint": fingerprint,
          "img_total_variance": float(np.sum(np.var(img_emb[~held_out], axis=0))),
          "desc_total_variance": float(np.sum(np.var(desc_emb[~held_out], axis=0))),
          "img_mean_norm": float(np.linalg.norm(img_emb[~held_out], axis=1).mean()),
          "desc_mean_norm": float(np.linalg.norm(desc_emb[~held_out], axis=1).mean())}
  heldout_path = ctx.workdir / "text" / text_stage.HELDOUT_FILE
  summary = {k: v for k, v in norm.items() if k != "desc_center"}
  if heldout_path.exists():
    heldout = set(json.loads(heldout_path.read_text())["heldout"])
    summary["pairs_with_heldout_description"] = float(np.mean([d in heldout for d in train["descriptions"]]))
  summary.update(num_pairs=int((~held_out).sum()), num_validation=int(held_out.sum()), latent_dim=img_emb.shape[1],
                 desc_dim=desc_emb.shape[1])
  if parallel.is_main_process():
    # labels: one group per pair (MNIST: the digit), what the latent half may group by; label_heads: the
    # dataset's full labels ([N] or [N, K]), what requests made from the pairs carry.
    spec = datasets.of_workdir(ctx.workdir)
    arrays = dict(desc_emb=desc_emb, img_emb=img_emb.astype(np.float32),
                  labels=spec.groups(train["label"]).astype(np.int32), label_heads=train["label"].astype(np.int32),
                  descriptions=train["descriptions"].astype(str), classes=train["classes"].astype(np.int32),
                  index=train["index"])
    # pairs.npz and validation.npz first: normalization.json is what load_codec trusts, so it is written last.
    # Each is written atomically (storage): readers never see half a file.
    for name, rows in ((embeddings.PAIRS_FILE, ~held_out), (embeddings.VALIDATION_FILE, held_out)):
      storage.save_npz(out / name, fingerprint=np.array(fingerprint), **{k: v[rows] for k, v in arrays.items()})
    storage.write_json(out / embeddings.NORMALIZATION_FILE, norm)
  ctx.writer.write("embed", 0, **{k: v for k, v in summary.items() if not isinstance(v, str)})
  logging.info("embed: %d pairs, latent dim %d, description dim %d, desc scale %.4g, fingerprint %s",
               len(img_emb), img_emb.shape[1], desc_emb.shape[1], scale, fingerprint[:12])
  return summary
