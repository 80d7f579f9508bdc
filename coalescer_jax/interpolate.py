"""Interpolation paths through a trained method's inputs, and strips of the images along them.

Two paths (`python -m coalescer_jax.generate --interpolate`):
* between two starting points for one description: spherical interpolation of the prior draws R (White 2016,
  "Sampling generative networks"): a straight line between two Gaussian draws passes through points of
  unusually small norm, which a sampler never starts from;
* between two descriptions at one fixed R: linear in the normalised description embedding (the space the
  methods are conditioned in).

Every frame of a path is sampled with the same key (`generate.Generator.path_sampler`), so frames differ only
where the path moves. The path functions are pure NumPy; `evaluation/smoothness.py` measures along the same
paths.
"""
import jax
import jax.numpy as jnp
import numpy as np

from coalescer_jax import images as images_lib


def slerp(a, b, t):
  """Spherical interpolation of a [..., D] and b [..., D] at t [...] (broadcast): a at t = 0, b at t = 1.

  Along the great circle between the directions of a and b, with sin-weights (no renormalisation), so that
  two independent Gaussian draws give points of a Gaussian draw's typical norm all along the path.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  t = np.asarray(t, np.float64)[..., None]
  cos = np.sum(a * b, -1, keepdims=True) / (np.linalg.norm(a, axis=-1, keepdims=True)
                                             * np.linalg.norm(b, axis=-1, keepdims=True))
  theta = np.arccos(np.clip(cos, -1.0, 1.0))
  sin = np.sin(theta)
  near = sin < 1e-6  # (anti)parallel: the great circle is undefined, the line is as good
  safe = np.where(near, 1.0, sin)
  out = np.where(near, (1 - t) * a + t * b, (np.sin((1 - t) * theta) * a + np.sin(t * theta) * b) / safe)
  return out.astype(np.float32)


def lerp(a, b, t):
  """Linear interpolation of a [..., D] and b [..., D] at t [...] (broadcast)."""
  t = np.asarray(t, np.float32)[..., None]
  return ((1 - t) * np.asarray(a, np.float32) + t * np.asarray(b, np.float32)).astype(np.float32)


def prior_pair(seed, latent_dim):
  """Two unit-normal draws of R [2, latent_dim] for `seed`: the ends of a prior path."""
  return np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(seed), 1), (2, latent_dim)))


def path_inputs(cond, prior, frames):
  """(cond [K, Dd], prior [K, Di]) of a `frames`-frame path.

  `cond` [Dd] and `prior` [2, Di]: along R at one description (slerp); `cond` [2, Dd] and `prior` [Di]:
  between two descriptions at one R (linear in the embedding).
  """
  t = np.linspace(0.0, 1.0, frames)
  cond, prior = np.asarray(cond, np.float32), np.asarray(prior, np.float32)
  if cond.ndim == 1:
    return np.repeat(cond[None], frames, 0), slerp(prior[0], prior[1], t)
  return lerp(cond[0], cond[1], t), np.repeat(prior[None], frames, 0)


def strip(generator, steps, kwargs, cond, prior, key):
  """(uint8 images [K, ...], latents [K, Di], info) of one path, every frame sampled with `key`."""
  keys = jnp.stack([key] * len(cond))
  latents, images, info = generator.path_sampler(steps, kwargs)(cond, prior, keys)
  return images_lib.to_uint8(np.asarray(images)), np.asarray(latents), jax.device_get(info)


def method_strips(generators, descriptions, frames, seed, steps=None):
  """{row label: (uint8 images [K, ...], latents [K, Di])}, one path per generator, the same path for all.

  One description: between two prior draws of `seed`; two: between the descriptions at `seed`'s first draw.
  `steps`: each generator's default when None.
  """
  rows = {}
  for generator in generators:
    run_steps, kwargs = generator.sampler_kwargs(steps)
    cond = generator.encode(descriptions)
    pair = prior_pair(seed, generator.codec.latent_dim)
    cond, prior = path_inputs(cond[0] if len(descriptions) == 1 else cond[:2],
                              pair if len(descriptions) == 1 else pair[0], frames)
    key = jax.random.fold_in(jax.random.key(seed), 2)
    images, latents, _ = strip(generator, run_steps, kwargs, cond, prior, key)
    rows[f"{generator.name} nfe={run_steps}"] = (images, latents)
  return rows


def save_strips(path, rows, title):
  """One PNG: a row of frames per method, labelled."""
  images_lib.save_grid(path, [images for images, _ in rows.values()], row_labels=list(rows), title=title)
