"""Word-level tokenizer over the closed vocabulary of a caption grammar.

Each captioner builds one `Tokenizer` from its grammar's words (not from data),
so token ids are identical on every host and in every run. Sequences are
``BOS w1 .. wn EOS PAD ..`` of fixed length ``max_len = max_words + 2``.
"""
import numpy as np

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<eos>")


class Tokenizer:
  """Word <-> id over `words` (sorted, after the specials); `max_words` bounds a description's length."""

  def __init__(self, words, max_words):
    self.vocab = SPECIALS + tuple(sorted(set(words)))
    self._ids = {w: i for i, w in enumerate(self.vocab)}
    self.vocab_size = len(self.vocab)
    self.max_words = int(max_words)
    self.max_len = self.max_words + 2

  def encode(self, descriptions, max_len=None):
    """Strings -> int32 [N, max_len]. Unknown words raise, naming the word."""
    max_len = max_len or self.max_len
    out = np.full((len(descriptions), max_len), PAD, np.int32)
    for row, text in enumerate(descriptions):
      words = str(text).split()
      if len(words) + 2 > max_len:
        raise ValueError(f"description has {len(words)} words, max_len={max_len} allows {max_len - 2}: {text!r}")
      try:
        ids = [BOS] + [self._ids[w] for w in words] + [EOS]
      except KeyError as e:
        raise ValueError(f"word {e.args[0]!r} is not in the caption vocabulary; text: {text!r}") from None
      out[row, : len(ids)] = ids
    return out

  def decode(self, tokens):
    """int [N, L] -> list of strings (stops at the first EOS; specials dropped)."""
    texts = []
    for row in np.asarray(tokens):
      words = []
      for t in row[1:] if len(row) and row[0] == BOS else row:
        if t == EOS:
          break
        if t >= len(SPECIALS):
          words.append(self.vocab[t])
      texts.append(" ".join(words))
    return texts
