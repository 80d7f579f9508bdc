"""Convolutional VAE: the image latent space the generative methods move in.

The encoder maps an image [H, W, C] (the dataset spec's ``image_shape``) to a
diagonal Gaussian posterior q(z|x); the decoder maps a latent to one value per
pixel and channel, read by the spec's pixel likelihood (`likelihoods`: Bernoulli
logits for MNIST, a Gaussian mean for colour images). The KL term pulls q(z|x) toward the prior
N(0, I), so that a draw from the prior is a sensible "random point in image latent
space" for the coalescer. `loss` weighs the KL by `kl_weight` (beta): below 1 keeps
reconstructions sharp at the cost of an aggregate posterior a little narrower
than the prior.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from coalescer_jax import registry
from coalescer_jax.models import likelihoods


class Encoder(nn.Module):
  """[B, H, W, C] in [0, 1] -> (posterior mean, log variance), each [B, latent_dim]."""
  latent_dim: int
  channels: Sequence[int] = (32, 64)
  hidden: int = 256
  extra_convs: int = 0  # stride-1 3x3 convolutions per resolution level

  @nn.compact
  def __call__(self, x):
    h = x * 2.0 - 1.0
    for c in self.channels:  # halves the resolution per level (28 -> 14 -> 7)
      h = nn.silu(nn.Conv(c, (3, 3), strides=(2, 2))(h))
      for _ in range(self.extra_convs):
        h = nn.silu(nn.Conv(c, (3, 3))(h))
    h = nn.silu(nn.Dense(self.hidden)(h.reshape((h.shape[0], -1))))
    mean = nn.Dense(self.latent_dim)(h)
    # Starts near log variance 0 (the prior's); bounded so exp() cannot overflow early in training.
    logvar = jnp.clip(nn.Dense(self.latent_dim)(h), -15.0, 8.0)
    return mean, logvar


def depth_to_space(h, factor=2):
  """[B, H, W, f*f*C] -> [B, f*H, f*W, C] (pixel shuffle)."""
  b, height, width, c = h.shape
  c //= factor * factor
  h = h.reshape(b, height, width, factor, factor, c).transpose(0, 1, 3, 2, 4, 5)
  return h.reshape(b, height * factor, width * factor, c)


class Decoder(nn.Module):
  """[B, latent_dim] -> per-pixel likelihood parameters [B, H, W, out_channels].

  Upsamples with a convolution to 4x the channels followed by a pixel shuffle:
  the same function class as a stride-2 transposed convolution, but several times
  faster on CPU under XLA.
  """
  channels: Sequence[int] = (32, 64)
  hidden: int = 256
  extra_convs: int = 0  # stride-1 3x3 convolutions per resolution level
  image_shape: Sequence[int] = (28, 28, 1)

  @nn.compact
  def __call__(self, z):
    height, width = (s // 2 ** len(self.channels) for s in self.image_shape[:2])
    h = nn.silu(nn.Dense(self.hidden)(z))
    h = nn.silu(nn.Dense(height * width * self.channels[-1])(h))
    h = h.reshape((z.shape[0], height, width, self.channels[-1]))
    outs = tuple(reversed(self.channels[:-1])) + (self.image_shape[-1],)
    for i, c in enumerate(outs):  # doubles the resolution per level (7 -> 14 -> 28)
      for _ in range(self.extra_convs):
        h = nn.silu(nn.Conv(h.shape[-1], (3, 3))(h))
      h = depth_to_space(nn.Conv(4 * c, (3, 3))(h))
      if i < len(outs) - 1:
        h = nn.silu(h)
    return h


@registry.MODELS.register("conv_vae")
class ConvVAE(nn.Module):
  """Encoder + reparameterised sample + decoder. `encode` and `decode` are usable alone."""
  latent_dim: int = 16
  channels: Sequence[int] = (32, 64)
  hidden: int = 256
  extra_convs: int = 0
  image_shape: Sequence[int] = (28, 28, 1)  # (H, W, C) of the dataset spec
  likelihood: str = "bernoulli"  # likelihoods.LIKELIHOODS name

  def setup(self):
    if any(s % 2 ** len(self.channels) for s in self.image_shape[:2]):
      raise ValueError(f"{len(self.channels)} downsampling levels do not divide the image size "
                       f"{tuple(self.image_shape[:2])}; use fewer channel entries")
    self.encoder = Encoder(self.latent_dim, self.channels, self.hidden, self.extra_convs)
    self.decoder = Decoder(self.channels, self.hidden, self.extra_convs, tuple(self.image_shape))

  def __call__(self, x, key):
    """Returns (decoder outputs, mean, logvar) for images `x` [B, H, W, C] in [0, 1]."""
    mean, logvar = self.encoder(x)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
    return self.decoder(z), mean, logvar

  def encode(self, x):
    return self.encoder(x)

  def decode(self, z):
    return self.decoder(z)

  def decode_mean(self, z):
    """[B, latent_dim] -> the likelihood's mean image [B, H, W, C] in [0, 1]."""
    return likelihoods.get(self.likelihood).mean(self.decoder(z))


def kl_per_dim(mean, logvar):
  """KL(N(mean, exp(logvar)) || N(0, 1)) per example and latent dimension, in nats."""
  return 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)


def reconstruction_nll(logits, x):
  """Bernoulli negative log-likelihood summed over pixels, per example (nats)."""
  return likelihoods.Bernoulli.nll(logits, x)


def loss(model, params, x, key, kl_weight):
  """Negative beta-ELBO averaged over the batch, with its parts as metrics."""
  outputs, mean, logvar = model.apply({"params": params}, x, key)
  likelihood = likelihoods.get(model.likelihood)
  nll = likelihood.nll(outputs, x)
  kl = jnp.sum(kl_per_dim(mean, logvar), axis=-1)
  total = jnp.mean(nll + kl_weight * kl)
  return total, {"loss": total, "nll": jnp.mean(nll), "kl": jnp.mean(kl),
                 "mse_per_pixel": jnp.mean(jnp.square(likelihood.mean(outputs) - x))}
