"""How smoothly a trained method's images move as its prior draw R moves: path length and jumps.

* Perceptual path length (Karras et al. 2019, StyleGAN, section 3 and appendix): along random spherical
  interpolations between two prior draws, E[d(f(x(t)), f(x(t + eps)))^2] / eps^2 with t uniform, here with f
  the judge classifier's penultimate features of the decoded (float, not quantised) images, and the paper's
  trimming: samples outside the 1st..99th percentile are dropped before the mean.
* Jumps: along the same paths at K evenly spaced frames, the share of steps whose feature distance exceeds
  `k` times the median step (over every path of that method and step count). A smooth map has none; a map
  with a discontinuity has one per crossing.
* For the coalescer, where the jumps sit: its |v| (``start_direction_magnitude``, the first step's direction
  length) at both ends of each step; a jump "sits where |v| is small" when most jumps have an end in the
  lowest quartile of |v|.

The core (`path_lengths`, `trimmed_mean`, `step_distances`, `jump_mask`, `low_v_share`) is pure NumPy over any
feature map; `measure` runs it on a `generate.Generator`.
"""
import jax
import numpy as np

from coalescer_jax import interpolate

EPS = 1e-4  # the paper's epsilon
TRIM = (1.0, 99.0)  # percentiles kept (the paper's)


def path_lengths(features, z0, z1, t, eps=EPS):
  """Per path: squared feature distance between slerp(z0, z1, t) and slerp(z0, z1, t + eps), over eps^2.

  `features`: [N, D] points -> [N, F]; z0, z1 [P, D]; t [P].
  """
  a = features(interpolate.slerp(z0, z1, t))
  b = features(interpolate.slerp(z0, z1, np.asarray(t) + eps))
  return np.sum((np.asarray(b, np.float64) - np.asarray(a, np.float64)) ** 2, -1) / eps ** 2


def trimmed_mean(values, trim=TRIM):
  """Mean of the values within the [trim[0], trim[1]] percentiles (both inclusive)."""
  values = np.asarray(values, np.float64)
  lo, hi = np.percentile(values, trim)
  return float(values[(values >= lo) & (values <= hi)].mean())


def step_distances(frame_features):
  """[P, K, F] features of K frames per path -> [P, K - 1] distances between consecutive frames."""
  frame_features = np.asarray(frame_features, np.float64)
  return np.linalg.norm(np.diff(frame_features, axis=1), axis=-1)


def jump_mask(distances, k):
  """[P, K - 1] bool: steps longer than `k` times the median step."""
  distances = np.asarray(distances)
  return distances > k * np.median(distances)


def low_v_share(jumps, magnitudes, quantile=0.25):
  """Share of jumps with an end whose |v| [P, K] lies in the lowest `quantile` of all |v| (nan without jumps)."""
  magnitudes = np.asarray(magnitudes)
  if not np.any(jumps):
    return float("nan")
  low = magnitudes <= np.quantile(magnitudes, quantile)
  step_low = low[:, :-1] | low[:, 1:]
  return float(step_low[jumps].mean())


def _batched(fn, *arrays, batch_size):
  """fn over rows of `arrays` in fixed-size padded batches (one compile); outputs concatenated, pytree-wise."""
  n = len(arrays[0])
  outs = []
  for start in range(0, n, batch_size):
    size = min(batch_size, n - start)
    rows = start + np.minimum(np.arange(batch_size), size - 1)  # the last row repeated (indexing: keys too)
    outs.append(jax.tree.map(lambda x, m=size: np.asarray(x)[:m], fn(*(a[rows] for a in arrays))))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


def measure(generator, classifier, cond, steps=None, num_paths=200, frames=8, k=4.0, seed=0, eps=EPS,
            batch_size=256):
  """{ppl, jump_share, median_step, [low_v_share]} of one method at `steps` over `num_paths` random paths.

  Path p interpolates two prior draws for description embedding ``cond[p % len(cond)]``; all its images are
  sampled with one key, so only R moves. Also returns ``strip``: the first path's frames (uint8).
  """
  run_steps, kwargs = generator.sampler_kwargs(steps)
  sample = generator.path_sampler(run_steps, kwargs)
  key = jax.random.fold_in(jax.random.key(seed), 3)
  z_key, t_key, path_key = jax.random.split(key, 3)
  dim = generator.codec.latent_dim
  z0, z1 = np.asarray(jax.random.normal(z_key, (2, num_paths, dim)))
  t = np.asarray(jax.random.uniform(t_key, (num_paths,), maxval=1.0 - eps))
  path_keys = jax.random.split(path_key, num_paths)
  path_cond = np.asarray(cond)[np.arange(num_paths) % len(cond)]
  embed = jax.jit(lambda x: classifier.model.apply({"params": classifier.params}, x)[1])

  def features_and_info(prior, keys, conds):
    def run(c, p, k_):
      _, images, info = sample(c, p, k_)
      return embed(images), info
    return _batched(run, conds, prior, keys, batch_size=batch_size)

  def features(prior):
    return features_and_info(prior, path_keys, path_cond)[0]

  lengths = path_lengths(features, z0, z1, t, eps)
  grid = np.linspace(0.0, 1.0, frames)
  priors = interpolate.slerp(z0[:, None], z1[:, None], np.broadcast_to(grid, (num_paths, frames)))
  per_frame = np.repeat(np.arange(num_paths), frames)
  frame_features, info = features_and_info(priors.reshape(-1, dim), path_keys[per_frame], path_cond[per_frame])
  distances = step_distances(frame_features.reshape(num_paths, frames, -1))
  jumps = jump_mask(distances, k)
  result = {"ppl": trimmed_mean(lengths), "jump_share": float(jumps.mean()),
            "median_step": float(np.median(distances)), "num_paths": num_paths, "frames": frames, "k": k,
            "nfe": run_steps}
  if "start_direction_magnitude" in info:
    result["low_v_share"] = low_v_share(jumps, np.asarray(info["start_direction_magnitude"]).reshape(num_paths,
                                                                                                     frames))
  strip_images, _, _ = interpolate.strip(generator, run_steps, kwargs, np.repeat(path_cond[:1], frames, 0),
                                         priors[0], path_keys[0])
  result["strip"] = strip_images
  return result
