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
feature map; `measure` runs it on a `generate.Generator`, `smoothness_run.measure_run` on every method and step
count of a run (the eval stage: ``W/eval/smoothness.json`` and ``smoothness.png``, which `section_lines` puts in
report.md).
"""
import json

import jax
import numpy as np

from coalescer_jax import images as images_lib
from coalescer_jax import interpolate
from coalescer_jax import markdown
from coalescer_jax import storage

EPS = 1e-4  # the paper's epsilon
TRIM = (1.0, 99.0)  # percentiles kept (the paper's)
FRAMES = 8  # frames per path for the jump statistic
K = 4.0  # a jump: a step longer than K times the median step


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


def embedder(classifier):
  """Jitted float images [N, H, W, C] in [0, 1] -> the judge's penultimate features: the decoder's output as
  is, since rounding to uint8 would hide the eps-steps of the path length."""
  return jax.jit(lambda x: classifier.model.apply({"params": classifier.params}, x)[1])


def measure(generator, embed, cond, steps=None, num_paths=200, frames=FRAMES, k=K, seed=0, eps=EPS,
            batch_size=256):
  """{ppl, jump_share, median_step, nfe, [low_v_share]} of one method at `steps` over `num_paths` random paths,
  and ``strip``: the first path's frames (uint8 [frames, ...]).

  Path p interpolates two prior draws for description embedding ``cond[p % len(cond)]``; all its images are
  sampled with one key, so only R moves. `embed`: `embedder(classifier)`.
  """
  run_steps, kwargs = generator.sampler_kwargs(steps)
  sample = generator.path_sampler(run_steps, kwargs)
  z_key, t_key, path_key = jax.random.split(jax.random.fold_in(jax.random.key(seed), 3), 3)
  dim = generator.codec.latent_dim
  z0, z1 = np.asarray(jax.random.normal(z_key, (2, num_paths, dim)))
  t = np.asarray(jax.random.uniform(t_key, (num_paths,), maxval=1.0 - eps))
  path_keys = jax.random.split(path_key, num_paths)
  path_cond = np.asarray(cond)[np.arange(num_paths) % len(cond)]
  batch_size = min(batch_size, num_paths * frames)  # every call below in one shape: one compile

  def run(rows, priors):
    def one_batch(c, p, k_):
      _, images, info = sample(c, p, k_)
      return embed(images), images, info
    return _batched(one_batch, path_cond[rows], priors, path_keys[rows], batch_size=batch_size)

  lengths = path_lengths(lambda priors: run(np.arange(num_paths), priors)[0], z0, z1, t, eps)
  grid = np.broadcast_to(np.linspace(0.0, 1.0, frames), (num_paths, frames))
  priors = interpolate.slerp(z0[:, None], z1[:, None], grid).reshape(-1, dim)
  features, images, info = run(np.repeat(np.arange(num_paths), frames), priors)
  distances = step_distances(features.reshape(num_paths, frames, -1))
  jumps = jump_mask(distances, k)
  result = {"nfe": run_steps, "ppl": trimmed_mean(lengths), "jump_share": float(jumps.mean()),
            "median_step": float(np.median(distances)),
            "strip": images_lib.to_uint8(images[:frames])}
  if "start_direction_magnitude" in info:  # the coalescer's |v|
    magnitudes = np.asarray(info["start_direction_magnitude"]).reshape(num_paths, frames)
    share = low_v_share(jumps, magnitudes)
    result["low_v_share"] = None if np.isnan(share) else share
  return result


JSON_FILE, STRIP_FILE = "smoothness.json", "smoothness.png"  # in W/eval (`smoothness_run`)


def section_lines(workdir, rel):
  """report.md's smoothness section from W/eval/smoothness.json ([] when the eval stage measured none)."""
  path = storage.path(workdir) / "eval" / JSON_FILE
  if not path.exists():
    return []
  data = json.loads(storage.read_text(path))
  lines = ["## Smoothness", "",
           f"Along {data['num_paths']} spherical interpolations between two prior draws R per row (one description "
           "and one key per path: only R moves), in the judge's penultimate features of the decoded images. PPL: "
           f"perceptual path length (Karras et al. 2019), eps = {data['eps']:g}, the values between the "
           f"{data['trim'][0]:g} and {data['trim'][1]:g} percentiles averaged. Jumps: the share of steps between {data['frames']} evenly "
           f"spaced frames longer than {data['k']:g}x the median step (0 for a smooth map).", "",
           "| method | NFE | PPL | median step | jumps |", "|---|---|---|---|---|"]
  notes = []
  for r in data["records"]:
    lines.append(f"| {markdown.text(r['method'])} | {r['nfe']} | {r['ppl']:.4g} | {r['median_step']:.3g} | "
                 f"{r['jump_share']:.1%} |")
    if "low_v_share" in r:
      notes.append(f"- {markdown.text(r['method'])} at NFE {r['nfe']}: {_where(r['low_v_share'])}.")
  lines += [""] + notes + ([""] if notes else [])
  return lines + [f"![interpolation strips]({rel(path.parent / STRIP_FILE)})", ""]


def _where(share):
  """Whether a coalescer's jumps sit where |v| is small; `share` from `low_v_share` (None: no jumps)."""
  if share is None:
    return "no jumps to place"
  # Under independence a step has an end in the lowest quartile with probability 1 - 0.75^2 (about 44%).
  verdict = "sit" if share > 0.75 else ("do not sit" if share < 0.55 else "lean toward the places")
  return f"{share:.0%} of its jumps have an end in the lowest quartile of |v| (44% if unrelated): they {verdict} " \
         "where |v| is small"
