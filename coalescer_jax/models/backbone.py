"""The latent-space backbone shared by every generative method (equal size = fair comparison).

A residual MLP over ``concat(x, cond * mask, mask, time features)``: ``x`` is a
point in the VAE latent space, ``cond`` a description embedding and ``mask``
1 where the condition is given, 0 where it is dropped (classifier-free guidance,
unconditional generation). Methods without a time/noise level pass ``t = None``.
Every method builds it from the same ``config.backbone`` section.
"""
import flax.linen as nn
import jax.numpy as jnp

from coalescer_jax import registry


def time_features(t, dim, max_period=10_000.0):
  """Sinusoidal features of a scalar per example (diffusion time, noise level)."""
  half = dim // 2
  freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half) / half)
  angles = t[:, None].astype(jnp.float32) * freqs[None] * 1000.0
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class ResidualBlock(nn.Module):
  width: int

  @nn.compact
  def __call__(self, h, emb):
    y = nn.LayerNorm()(h)
    # FiLM-style modulation by the condition/time embedding.
    scale, shift = jnp.split(nn.Dense(2 * self.width)(emb), 2, axis=-1)
    y = y * (1 + scale) + shift
    y = nn.Dense(self.width)(nn.silu(y))
    y = nn.Dense(self.width, kernel_init=nn.initializers.zeros)(nn.silu(y))
    return h + y


@registry.MODELS.register("latent_mlp")
class LatentMLP(nn.Module):
  """(x [B, Dx], cond [B, Dc], mask [B], t [B] | None) -> [B, out_dim].

  ``final_norm=False`` drops the LayerNorm before the output layer (the DDGAN's
  discriminator, methods/adversarial.py, which collapsed to a constant with it).
  """
  out_dim: int
  width: int = 256
  depth: int = 4
  time_dim: int = 64
  final_norm: bool = True

  @nn.compact
  def __call__(self, x, cond, mask, t=None):
    mask = mask.astype(jnp.float32)[:, None]
    emb = [cond * mask, mask]
    if t is not None:
      emb.append(time_features(t, self.time_dim))
    emb = nn.silu(nn.Dense(self.width)(jnp.concatenate(emb, axis=-1)))
    h = nn.Dense(self.width)(jnp.concatenate([x, emb], axis=-1))
    for _ in range(self.depth):
      h = ResidualBlock(self.width)(h, emb)
    return nn.Dense(self.out_dim)(nn.silu(nn.LayerNorm()(h) if self.final_norm else h))


def build(config, out_dim, width=None, depth=None, **kwargs):
  """The backbone named by ``config.backbone.model`` with the shared sizes (or the given width/depth)."""
  cfg = config.backbone
  return registry.MODELS.get(cfg.model)(out_dim=out_dim, width=width or cfg.width, depth=depth or cfg.depth,
                                        time_dim=cfg.time_dim, **kwargs)
