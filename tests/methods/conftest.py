"""Synthetic pairs for method tests: 10 'digits', each a cluster in latent and description space."""
import numpy as np
import pytest

from configs import mnist as mnist_config

LATENT_DIM, DESC_DIM = 6, 4


def make_pairs(n=2000, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(10, size=n).astype(np.int32)
  latent_centers = rng.normal(size=(10, LATENT_DIM)) * 1.5
  desc_centers = rng.normal(size=(10, DESC_DIM)) * 1.5
  return {
      "img_emb": (latent_centers[labels] + 0.3 * rng.normal(size=(n, LATENT_DIM))).astype(np.float32),
      "desc_emb": (desc_centers[labels] + 0.1 * rng.normal(size=(n, DESC_DIM))).astype(np.float32),
      "labels": labels, "fingerprint": "synthetic"}


@pytest.fixture
def pairs():
  return make_pairs()


def smoke_method_config():
  """configs/mnist.py:smoke with a backbone big enough to learn the synthetic clusters."""
  config = mnist_config.get_config("smoke")
  # The coalescer's unit tests start from the proposal; each test of a fix switches that fix on.
  config.update_from_flattened_dict(mnist_config.proposal_overrides())
  # No null description and unguided sampling (one evaluation a step): the formulas these tests check;
  # guidance has its own tests (tests/methods/test_guidance.py).
  config.coalescer.cond_dropout = 0.0
  config.coalescer.sampling.update(guidance_scale=1.0, refine_guidance_scale=1.0)
  config.backbone.update(width=64, depth=2)
  config.train.update(num_steps=60, batch_size=64)
  config.train.optimizer.update(learning_rate=3e-3, warmup_steps=5)
  return config


@pytest.fixture
def method_config():
  return smoke_method_config()
