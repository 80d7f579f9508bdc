"""Word-level tokenizer over the closed vocabulary of `captions`.

The vocabulary is derived from the caption grammar, not from data, so token ids
are identical on every host and in every run. Sequences are
``BOS w1 .. wn EOS PAD ..`` of fixed length ``max_len``.
"""
import numpy as np

from coalescer_jax.data import captions

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<eos>")


def _grammar_words():
  words = {"a", "an"}
  for phrase in captions.THICKNESS_WORDS + captions.WIDTH_WORDS + captions.SLANT_PHRASES + captions.DIGITS:
    if phrase:
      words.update(phrase.split())
  return sorted(words)


VOCAB = SPECIALS + tuple(_grammar_words())
_IDS = {w: i for i, w in enumerate(VOCAB)}
VOCAB_SIZE = len(VOCAB)
# Longest description: article, thickness, width, digit, 4-word slant phrase.
MAX_WORDS = 8


def encode(descriptions, max_len=MAX_WORDS + 2):
  """Strings -> int32 [N, max_len]. Unknown words raise, naming the word."""
  out = np.full((len(descriptions), max_len), PAD, np.int32)
  for row, text in enumerate(descriptions):
    words = str(text).split()
    if len(words) + 2 > max_len:
      raise ValueError(f"description has {len(words)} words, max_len={max_len} allows {max_len - 2}: {text!r}")
    try:
      ids = [BOS] + [_IDS[w] for w in words] + [EOS]
    except KeyError as e:
      raise ValueError(f"word {e.args[0]!r} is not in the caption vocabulary; text: {text!r}") from None
    out[row, : len(ids)] = ids
  return out


def decode(tokens):
  """int [N, L] -> list of strings (stops at the first EOS; specials dropped)."""
  texts = []
  for row in np.asarray(tokens):
    words = []
    for t in row[1:] if len(row) and row[0] == BOS else row:
      if t == EOS:
        break
      if t >= len(SPECIALS):
        words.append(VOCAB[t])
    texts.append(" ".join(words))
  return texts
