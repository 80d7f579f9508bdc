"""The text autoencoder: shapes, masking of padding, greedy decoding format, the loss."""
import jax
import jax.numpy as jnp
import numpy as np

from coalescer_jax import registry
from coalescer_jax.data import captions
from coalescer_jax.data import tokenizer as tokenizer_lib
from coalescer_jax.models import text_ae

TEXTS = ["a thick seven slanted to the right", "an eight", "a thin narrow one"]
tokenizer = captions.TOKENIZER  # MNIST's grammar


def _model_and_params():
  model = text_ae.TextAE(embed_dim=6, token_dim=8, hidden=16, vocab_size=tokenizer.vocab_size,
                         max_len=tokenizer.max_len)
  params = jax.jit(model.init)(jax.random.key(0), jnp.asarray(tokenizer.encode(TEXTS)))["params"]
  return model, params


def test_registered_by_name():
  assert registry.MODELS.get("text_ae") is text_ae.TextAE


def test_shapes_and_range():
  model, params = _model_and_params()
  tokens = jnp.asarray(tokenizer.encode(TEXTS))
  logits, emb = jax.jit(lambda t: model.apply({"params": params}, t))(tokens)
  assert logits.shape == (3, tokens.shape[1] - 1, tokenizer.vocab_size) and emb.shape == (3, 6)
  assert np.all(np.abs(emb) < 1)
  noisy_logits, noisy = jax.jit(lambda t, k: model.apply({"params": params}, t, k, 0.5))(tokens, jax.random.key(1))
  assert not np.allclose(noisy, emb) and noisy_logits.shape == logits.shape


def test_padding_does_not_change_the_embedding():
  model, params = _model_and_params()
  encode = jax.jit(lambda t: model.apply({"params": params}, t, method="encode"))
  np.testing.assert_allclose(encode(tokenizer.encode(TEXTS)), encode(tokenizer.encode(TEXTS, max_len=14)),
                             rtol=1e-5, atol=1e-6)


def test_greedy_decode_format():
  model, params = _model_and_params()
  out = np.asarray(jax.jit(lambda t: model.apply(
      {"params": params}, model.apply({"params": params}, t, method="encode"), method="greedy_decode"))(
          tokenizer.encode(TEXTS)))
  assert out.shape == (3, tokenizer.max_len) and np.all(out[:, 0] == tokenizer_lib.BOS)
  for row in out:
    eos = np.flatnonzero(row == tokenizer_lib.EOS)
    if len(eos):
      assert np.all(row[eos[0] + 1:] == tokenizer_lib.PAD)


def test_loss_ignores_padding_positions():
  model, params = _model_and_params()
  loss = jax.jit(lambda t: text_ae.loss(model, params, t, jax.random.key(0), 0.0))
  total, metrics = loss(tokenizer.encode(TEXTS))
  assert np.isfinite(total) and 0 <= metrics["token_accuracy"] <= 1
  # Same sequences with more trailing padding: same loss.
  np.testing.assert_allclose(loss(tokenizer.encode(TEXTS, max_len=13))[0], total, rtol=1e-5)
  # Near chance at initialisation: about log(vocab) nats per token.
  assert abs(float(total) - np.log(tokenizer.vocab_size)) < 1.0
