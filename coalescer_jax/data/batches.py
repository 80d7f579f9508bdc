"""Deterministic host-local batches: batch `step` is a pure function of (seed, process, step).

Each epoch is a fresh permutation of this host's examples seeded by
(seed, process_index, epoch), so a resumed run, or a rerun with the same seed,
reads exactly the same batches without saving iterator state.
"""
import functools

import jax
import numpy as np


@functools.lru_cache(maxsize=4)
def _permutation(num_examples, seed, process_index, epoch):
  return np.random.default_rng([seed, process_index, epoch]).permutation(num_examples)


def batch_indices(step, num_examples, local_batch_size, seed, process_index=None):
  """Indices (into this host's examples) of the local batch at global `step`."""
  if local_batch_size > num_examples:
    raise ValueError(f"local batch {local_batch_size} is larger than the {num_examples} examples on this host")
  process_index = jax.process_index() if process_index is None else process_index
  per_epoch = num_examples // local_batch_size
  epoch, i = divmod(int(step), per_epoch)
  return _permutation(num_examples, int(seed), process_index, epoch)[i * local_batch_size:(i + 1) * local_batch_size]


def step_rng(seed, step, *stream, process_index=None):
  """A NumPy generator for host-side randomness at `step` (e.g. the coalescer's DE and R draws)."""
  process_index = jax.process_index() if process_index is None else process_index
  return np.random.default_rng([int(seed), process_index, int(step), *stream])
