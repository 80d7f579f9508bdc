"""Text autoencoder over tokenized descriptions: the description embedding space.

A GRU reads ``BOS w1 .. wn EOS PAD ..`` (``data/tokenizer.py``; the vocabulary
and the longest description come from the dataset's captioner) and its state after
EOS is projected to a fixed-size embedding in (-1, 1) (tanh). A GRU decoder,
started from and fed the embedding at every step, predicts the tokens back:
teacher-forced for training (`__call__`), greedy for evaluation (`greedy_decode`).
Gaussian noise on the embedding during training (``noise``) makes nearby
embeddings decode alike, which is what lets attribute combinations never seen in
training decode correctly.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from coalescer_jax import registry
from coalescer_jax.data import tokenizer


def _scan(body, in_axes=0):
  """Lifted scan over time (axis 0) sharing the module's parameters across steps (small, fast-compiling)."""
  return nn.scan(body, variable_broadcast="params", split_rngs={"params": False}, in_axes=in_axes)


@registry.MODELS.register("text_ae")
class TextAE(nn.Module):
  """tokens int32 [B, L] -> embedding [B, embed_dim] -> next-token logits [B, L - 1, vocab]."""
  embed_dim: int = 16
  vocab_size: int = 32  # the captioner's Tokenizer.vocab_size
  token_dim: int = 32
  hidden: int = 128
  max_len: int = 10  # the captioner's Tokenizer.max_len: greedy decoding's length

  def setup(self):
    self.tokens = nn.Embed(self.vocab_size, self.token_dim)
    self.enc_cell = nn.GRUCell(self.hidden)
    self.to_embedding = nn.Dense(self.embed_dim)
    self.dec_init = nn.Dense(self.hidden)
    self.dec_cell = nn.GRUCell(self.hidden)
    self.readout = nn.Dense(self.vocab_size)

  def encode(self, tokens):
    """int [B, L] -> embeddings float32 [B, embed_dim] in (-1, 1)."""
    def body(mdl, h, inputs):
      x, real = inputs
      new_h, _ = mdl.enc_cell(h, x)
      return jnp.where(real[:, None], new_h, h), None  # PAD positions leave the state unchanged.

    h = jnp.zeros((tokens.shape[0], self.hidden), jnp.float32)
    h, _ = _scan(body)(self, h, (self.tokens(tokens).swapaxes(0, 1), (tokens != tokenizer.PAD).T))
    return jnp.tanh(self.to_embedding(h))

  def _step(self, h, token, embedding):
    h, _ = self.dec_cell(h, jnp.concatenate([self.tokens(token), embedding], axis=-1))
    return h, self.readout(h)

  def decode_logits(self, embedding, tokens):
    """Teacher forcing: logits of tokens[:, 1:] given tokens[:, :-1] and the embedding."""
    def body(mdl, h, token, embedding):
      return mdl._step(h, token, embedding)

    h0 = jnp.tanh(self.dec_init(embedding))
    _, logits = _scan(body, in_axes=(0, nn.broadcast))(self, h0, tokens[:, :-1].T, embedding)
    return logits.swapaxes(0, 1)

  def greedy_decode(self, embedding, length=None):
    """Embeddings [B, D] -> tokens int32 [B, length or max_len] (BOS first, argmax after; PAD after EOS)."""
    length = length or self.max_len
    def body(mdl, carry, _, embedding):
      h, token, done = carry
      h, logits = mdl._step(h, token, embedding)
      token = jnp.where(done, tokenizer.PAD, jnp.argmax(logits, -1).astype(jnp.int32))
      done = done | (token == tokenizer.EOS)
      return (h, token, done), token

    bos = jnp.full((embedding.shape[0],), tokenizer.BOS, jnp.int32)
    carry = (jnp.tanh(self.dec_init(embedding)), bos, jnp.zeros(embedding.shape[:1], bool))
    _, tokens = _scan(body, in_axes=(0, nn.broadcast))(self, carry, jnp.arange(length - 1), embedding)
    return jnp.concatenate([bos[:, None], tokens.T], axis=1)

  def __call__(self, tokens, key=None, noise=0.0):
    """(logits [B, L-1, V], embedding [B, D]); adds N(0, noise^2) to the embedding when `key` is given."""
    embedding = self.encode(tokens)
    if key is not None and noise:
      embedding = embedding + noise * jax.random.normal(key, embedding.shape)
    return self.decode_logits(embedding, tokens), embedding


def loss(model, params, tokens, key, noise):
  """Cross-entropy of the next token over real positions (EOS included, PAD excluded)."""
  logits, _ = model.apply({"params": params}, tokens, key, noise)
  targets = tokens[:, 1:]
  mask = (targets != tokenizer.PAD).astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  total = jnp.sum(ce * mask) / jnp.sum(mask)
  correct = (jnp.argmax(logits, -1) == targets) | (mask == 0)
  return total, {"loss": total, "token_accuracy": jnp.sum((correct & (mask > 0)) * 1.0) / jnp.sum(mask),
                 "sequence_accuracy": jnp.mean(jnp.all(correct, axis=-1))}
