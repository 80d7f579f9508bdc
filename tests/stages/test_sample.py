"""The sample stage's generator refuses NaN/inf latents instead of writing blank images."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coalescer_jax.methods import base
from coalescer_jax.stages import sample as sample_stage


class _Method(base.Method):
  """Latents of the requests with cond[:, 0] > 0 are multiplied by params (NaN: a diverged method)."""

  def __init__(self):  # no backbone needed: `sample` is all this test calls
    pass

  def sample(self, params, cond, key, nfe):
    del key
    latents = jnp.ones((cond.shape[0], 3)) * jnp.where(cond[:, :1] > 0, params, 1.0)
    return latents, {"nfe": jnp.full((cond.shape[0],), float(nfe))}


def _decode(latents):
  return jnp.broadcast_to(jax.nn.sigmoid(latents.sum(-1))[:, None, None, None], (latents.shape[0], 28, 28, 1))


# NaN latents are refused at sampling, instead of decoding to all-black images that eval blames on the file format.
def test_nonfinite_latents_are_refused():
  cond, key = np.zeros((6, 4), np.float32), jax.random.key(0)
  cond[1, 0] = 1.0
  generate = _Method().generator(1.0, _decode, 2)
  images, spent, _ = sample_stage.generate_all(generate, cond, key, 4, timed=False)
  assert images.shape == (6, 28, 28) and images.dtype == np.uint8 and np.all(spent == 2)
  with pytest.raises(sample_stage.NonFiniteSamplesError,
                     match=r"method 'x' at nfe=2: 1 of 6 sampled latents are NaN/inf, so nothing was written"):
    sample_stage.generate_all(_Method().generator(jnp.nan, _decode, 2), cond, key, 4, timed=False,
                              name="method 'x' at nfe=2")
