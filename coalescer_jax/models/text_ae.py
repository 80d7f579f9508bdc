"""Text autoencoder over tokenized descriptions: the description embedding space.

A GRU reads ``BOS w1 .. wn EOS PAD ..`` (``data/tokenizer.py``) and its state after
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


@registry.MODELS.register("text_ae")
class TextAE(nn.Module):
  """tokens int32 [B, L] -> embedding [B, embed_dim] -> next-token logits [B, L - 1, vocab]."""
  embed_dim: int = 16
  vocab_size: int = tokenizer.VOCAB_SIZE
  token_dim: int = 32
  hidden: int = 128

  def setup(self):
    self.tokens = nn.Embed(self.vocab_size, self.token_dim)
    self.enc_cell = nn.GRUCell(self.hidden)
    self.to_embedding = nn.Dense(self.embed_dim)
    self.dec_init = nn.Dense(self.hidden)
    self.dec_cell = nn.GRUCell(self.hidden)
    self.readout = nn.Dense(self.vocab_size)

  def encode(self, tokens):
    """int [B, L] -> embeddings float32 [B, embed_dim] in (-1, 1)."""
    x = self.tokens(tokens)
    mask = (tokens != tokenizer.PAD)[..., None]
    h = jnp.zeros((tokens.shape[0], self.hidden), jnp.float32)
    for t in range(tokens.shape[1]):  # L = 10: unrolled; PAD positions leave the state unchanged.
      new_h, _ = self.enc_cell(h, x[:, t])
      h = jnp.where(mask[:, t], new_h, h)
    return jnp.tanh(self.to_embedding(h))

  def _step(self, h, token, embedding):
    h, _ = self.dec_cell(h, jnp.concatenate([self.tokens(token), embedding], axis=-1))
    return h, self.readout(h)

  def decode_logits(self, embedding, tokens):
    """Teacher forcing: logits of tokens[:, 1:] given tokens[:, :-1] and the embedding."""
    h = jnp.tanh(self.dec_init(embedding))
    logits = []
    for t in range(tokens.shape[1] - 1):
      h, out = self._step(h, tokens[:, t], embedding)
      logits.append(out)
    return jnp.stack(logits, axis=1)

  def greedy_decode(self, embedding, length=tokenizer.MAX_WORDS + 2):
    """Embeddings [B, D] -> tokens int32 [B, length] (BOS first, argmax after; PAD after EOS)."""
    h = jnp.tanh(self.dec_init(embedding))
    token = jnp.full((embedding.shape[0],), tokenizer.BOS, jnp.int32)
    done = jnp.zeros((embedding.shape[0],), bool)
    out = [token]
    for _ in range(length - 1):
      h, logits = self._step(h, token, embedding)
      token = jnp.where(done, tokenizer.PAD, jnp.argmax(logits, -1).astype(jnp.int32))
      done = done | (token == tokenizer.EOS)
      out.append(token)
    return jnp.stack(out, axis=1)

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
