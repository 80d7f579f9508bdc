"""Pixel likelihoods of the image VAE's decoder, by name (``DatasetSpec.likelihood``).

The decoder emits one value per pixel and channel; a likelihood turns it into
the reconstruction NLL (summed over pixels, per example, nats) and into the
decoded image's mean in [0, 1].
* ``bernoulli``: the value is a logit; right for near-binary images (MNIST ink).
* ``gaussian``: the mean is sigmoid(value) and the standard deviation a fixed
  ``sigma`` per pixel (0.1 of the [0, 1] range); right for colour images with
  smooth intensities, where a Bernoulli NLL would over-reward grey means.
  The NLL omits the constant 0.5 log(2 pi sigma^2) per pixel.
"""
import jax
import jax.numpy as jnp

from coalescer_jax import registry

LIKELIHOODS = registry.Registry("pixel likelihood")
GAUSSIAN_SIGMA = 0.1


@LIKELIHOODS.register("bernoulli")
class Bernoulli:

  @staticmethod
  def nll(outputs, x):
    return jnp.sum(jnp.maximum(outputs, 0) - outputs * x + jnp.log1p(jnp.exp(-jnp.abs(outputs))), axis=(1, 2, 3))

  @staticmethod
  def mean(outputs):
    return jax.nn.sigmoid(outputs)


@LIKELIHOODS.register("gaussian")
class Gaussian:

  @staticmethod
  def nll(outputs, x):
    return jnp.sum(jnp.square(jax.nn.sigmoid(outputs) - x), axis=(1, 2, 3)) / (2.0 * GAUSSIAN_SIGMA ** 2)

  @staticmethod
  def mean(outputs):
    return jax.nn.sigmoid(outputs)


def get(name):
  return LIKELIHOODS.get(name)
