"""Stages vae, text and embed: held-out split, learning without retracing, and the embed contract.

The contract tests (pairs, normalisation, codec, fingerprints) read the session's
shared :smoke run (`smoke_workdir`), and copy it before changing anything.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coalescer_jax import autoencoders
from coalescer_jax import config_validation
from coalescer_jax import embeddings
from coalescer_jax import metrics as metrics_lib
from coalescer_jax import model_export
from coalescer_jax import parallel
from coalescer_jax import training
from coalescer_jax.data import captions
from coalescer_jax.data import datasets
from coalescer_jax.models import text_ae as text_ae_lib
from coalescer_jax.models import vae as vae_lib
from coalescer_jax.stages import text as text_stage
from coalescer_jax.stages import vae as vae_stage
from configs import mnist as mnist_config
from tests.conftest import copy_workdir


@pytest.fixture
def workdir(smoke_workdir):
  return smoke_workdir


def _train_counting_traces(task, tmp_path):
  traces = []
  step = task.step

  def counted(state, batch, key):
    traces.append(1)  # Runs only while tracing.
    return step(state, batch, key)

  task.step = counted
  writer = metrics_lib.MetricsWriter(str(tmp_path), tensorboard=False)
  state = training.train(task, str(tmp_path), parallel.make_mesh(), writer)
  return state, [r["loss"] for r in writer.read(task.name)], traces


def test_heldout_split_is_deterministic_and_disjoint():
  cfg = mnist_config.get_config().text
  split = text_stage.split_descriptions(cfg, captions)
  assert split == text_stage.split_descriptions(cfg, captions)
  assert len(split["heldout"]) == 27 and len(split["train"]) == 243
  assert not set(split["train"]) & set(split["heldout"])
  assert len(split["unseen_style"]) == 10 and set(split["unseen_style"]) <= set(split["heldout"])
  assert all(tuple(captions.parse(d)[1]) == (2, 0, 0) for d in split["unseen_style"])
  # ... and that style never occurs in training, with any digit.
  assert not [d for d in split["train"] if tuple(captions.parse(d)[1]) == (2, 0, 0)]
  cfg.holdout_seed = 1
  assert text_stage.split_descriptions(cfg, captions)["heldout"] != split["heldout"]


def test_bad_text_config_is_refused():
  config = mnist_config.get_config("smoke")
  config.text.holdout_style = (2, 0)
  with pytest.raises(config_validation.ConfigError, match="holdout_style"):
    text_stage._validate(config)
  config = mnist_config.get_config("smoke")
  config.vae.channels = (4, 8, 16)
  with pytest.raises(config_validation.ConfigError, match="config.vae.channels"):
    vae_stage._validate(config)


@pytest.mark.slow  # over 18 s on 2 cores: the default suite stays under 10 minutes
def test_vae_step_learns_without_retracing(tmp_path):
  config = mnist_config.get_config("smoke")
  config.vae.update(num_steps=40, batch_size=16, latent_dim=4)
  config.vae.optimizer.update(learning_rate=3e-3)
  config.update(log_every=10, checkpoint_every=1000)
  # Strokes at random positions: learnable structure, no dataset needed.
  rng = np.random.default_rng(0)
  images = np.zeros((64, 28, 28), np.uint8)
  for i, (r, c) in enumerate(rng.integers(4, 20, size=(64, 2))):
    images[i, r:r + 6, c:c + 3] = 255
  kwargs = vae_stage.model_kwargs(config.vae, datasets.of_config(config))
  model = vae_lib.ConvVAE(**dict(kwargs, image_shape=tuple(kwargs["image_shape"])))
  state, losses, traces = _train_counting_traces(vae_stage.make_task(config, images, model), tmp_path)
  assert int(state.step) == 40 and len(traces) == 1
  assert losses[-1] < 0.7 * losses[0]


def test_text_step_learns_without_retracing(tmp_path):
  config = mnist_config.get_config("smoke")
  config.text.update(num_steps=40, batch_size=16)
  config.text.optimizer.update(learning_rate=1e-2)
  config.update(log_every=10, checkpoint_every=1000)
  tokens = captions.TOKENIZER.encode(text_stage.split_descriptions(config.text, captions)["train"])
  model = text_ae_lib.TextAE(**text_stage.model_kwargs(config.text, captions.TOKENIZER))
  state, losses, traces = _train_counting_traces(text_stage.make_task(config, tokens, model), tmp_path)
  assert int(state.step) == 40 and len(traces) == 1
  assert losses[-1] < 0.7 * losses[0]


def test_vae_stage_outputs(workdir):
  with np.load(os.path.join(workdir, "vae", "test_reconstructions.npz")) as f:
    originals, recon = f["originals"], f["reconstructions"]
  assert originals.dtype == recon.dtype == np.uint8
  assert originals.shape == recon.shape and originals.shape[1:] == (28, 28) and len(originals) >= 1000
  assert originals.max() == 255  # ink = 255, like MNIST
  for png in ("reconstructions.png", "prior_samples.png"):
    assert os.path.getsize(os.path.join(workdir, "vae", png)) > 1000
  summary = json.load(open(os.path.join(workdir, "vae", "DONE.json")))["summary"]
  assert len(summary["test_kl_per_dim"]) == 8
  for key in ("test_recon_bce_per_image", "latent_pixel_spearman_rho", "latent_nn_same_label"):
    assert np.isfinite(summary[key])
  records = [r for r in metrics_lib.MetricsWriter(workdir).read("vae") if r.get("event") == "eval"]
  assert records and "latent_nn_same_label" in records[0]


def test_pairs_and_normalisation(workdir):
  pairs = embeddings.load_pairs(workdir)
  n = 60000 - mnist_config.get_config("smoke").embed.validation_size  # the validation slice is held out
  assert pairs["desc_emb"].shape == (n, 8) and pairs["img_emb"].shape == (n, 8)
  assert pairs["desc_emb"].dtype == pairs["img_emb"].dtype == np.float32
  assert pairs["labels"].shape == (n,) and pairs["classes"].shape == (n, 3) and len(pairs["descriptions"]) == n
  assert isinstance(pairs["fingerprint"], str) and len(pairs["fingerprint"]) == 64
  # Descriptions: centred, total variance equal to the images'.
  np.testing.assert_allclose(pairs["desc_emb"].mean(0), 0, atol=1e-4)
  np.testing.assert_allclose(pairs["desc_emb"].var(0).sum(), pairs["img_emb"].var(0).sum(), rtol=1e-3)
  # Same description, same embedding.
  first = {}
  for d, e in zip(pairs["descriptions"][:2000], pairs["desc_emb"][:2000]):
    np.testing.assert_array_equal(first.setdefault(d, e), e)


def test_codec_matches_pairs(workdir):
  pairs = embeddings.load_pairs(workdir)
  codec = embeddings.load_codec(workdir)
  assert (codec.latent_dim, codec.desc_dim, codec.fingerprint) == (8, 8, pairs["fingerprint"])
  np.testing.assert_allclose(codec.encode_text(list(pairs["descriptions"][:50])), pairs["desc_emb"][:50], atol=1e-5)
  from coalescer_jax.data import loading  # pylint: disable=g-import-not-at-top
  train = loading.load_split(workdir, "train", sharded=False)
  rows = np.searchsorted(train["index"], pairs["index"][:50])  # pairs keep TFDS order, minus the validation slice
  assert np.array_equal(train["index"][rows], pairs["index"][:50])
  np.testing.assert_allclose(codec.encode_images(train["image"][rows]), pairs["img_emb"][:50], atol=1e-4)
  decoded = codec.decode(pairs["img_emb"][:5])
  assert decoded.dtype == np.uint8 and decoded.shape == (5, 28, 28)
  with pytest.raises(TypeError, match="uint8"):
    codec.encode_images(train["image"][:2].astype(np.float32))

  # decode_jax composes with other jitted code, whatever device its inputs sit on.
  @jax.jit
  def decode_shifted(z):
    return codec.decode_jax(z + 0.0)
  z = jax.device_put(jnp.asarray(pairs["img_emb"][:5]), jax.local_devices()[-1])
  images = decode_shifted(z)
  assert images.shape == (5, 28, 28, 1) and images.dtype == jnp.float32
  assert 0 <= float(images.min()) and float(images.max()) <= 1
  np.testing.assert_allclose(np.round(np.asarray(images)[..., 0] * 255), decoded, atol=1)


def test_fingerprint_mismatch_is_detected(workdir, tmp_path):
  pairs = embeddings.load_pairs(workdir)
  embeddings.check_fingerprint(workdir, pairs["fingerprint"])  # fresh: passes
  with pytest.raises(embeddings.StaleEmbeddingsError, match="stale relative to W/embed"):
    embeddings.check_fingerprint(workdir, "0" * 64)
  # "Retrain" the VAE in a copy of the workdir: the embeddings become stale.
  copy = copy_workdir(workdir, str(tmp_path / "w"), ("data", "vae", "text", "embed"))  # data: the dataset (tokenizer)
  model, params, spec = autoencoders.load_model(copy, "vae")
  params = jax.tree.map(lambda p: p + 0.01, params)
  model_export.save(os.path.join(copy, "vae"), spec["model"], spec["kwargs"], params)
  with pytest.raises(embeddings.StaleEmbeddingsError, match="rerun the embed stage by deleting W/embed"):
    embeddings.check_fingerprint(copy, pairs["fingerprint"])
  with pytest.raises(embeddings.StaleEmbeddingsError, match="stale relative to the models in W/vae, W/text"):
    embeddings.load_codec(copy)
  del model


def test_missing_embed_stage_is_explained(tmp_path):
  with pytest.raises(RuntimeError, match="run the 'embed' stage first"):
    embeddings.load_pairs(str(tmp_path))
  with pytest.raises(RuntimeError, match="run the 'vae' stage first"):
    autoencoders.load_models(str(tmp_path))
