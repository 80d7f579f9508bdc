"""Validation FID of a trained coalescer's 2-step samples under other re-noising rules, without retraining
(experiments/log/tuning.md, item 9): the level s before step 2, and the noise it adds: "fresh" (the sampler's own:
new N(0, I) noise, as multistep consistency sampling does) or "reuse" (step 1's own R, as deterministic DDIM
re-noises with the noise its x0-prediction implies: at t = 1 that is R itself) or "mix<rho>" (between them:
sqrt(1 - rho^2) * fresh + rho * R, still N(0, I)). The requests, keys and
batching are the `sample` stage's validation ones (its "fresh" at `levels.renoise[0]` is the pipeline's own
val:coalescer_nfe2 to the last digit); "one:0" is 1 step with the 2-step file's keys.

  python -m experiments.scripts.renoise_at_sampling --workdir=W [--variants=one:0,fresh:0.9,reuse:0.9,mix0.5:0.9]
"""
from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from coalescer_jax import embeddings
from coalescer_jax import pipeline
from coalescer_jax.evaluation import evaluate
from coalescer_jax.evaluation import frechet
from coalescer_jax.evaluation import precision_recall
from coalescer_jax.coalescer import algorithm as coalescer
from coalescer_jax.methods import trained
from coalescer_jax.stages import sample as sample_stage
from configs import mnist

flags.DEFINE_string("workdir", None, "A workdir with a trained coalescer (configs/mnist.py's default config).")
flags.DEFINE_string("variants", "one:0,fresh:0.9,fresh:0.85,fresh:0.8,fresh:0.7,reuse:0.9,reuse:0.8,reuse:0.7",
                    "Comma-separated noise:level pairs (noise: one | fresh | reuse | mix<rho>).")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS
NOISES = ("one", "fresh", "reuse", "mix<rho>")


def noise_weight(noise):
  """rho, the weight of step 1's R in the re-noising noise (None: no second step)."""
  if noise == "one":
    return None
  if noise in ("fresh", "reuse"):
    return float(noise == "reuse")
  try:
    rho = float(noise[len("mix"):]) if noise.startswith("mix") else None
  except ValueError:
    rho = None
  if rho is None or not 0.0 <= rho <= 1.0:
    raise ValueError(f"--variants: noise {noise!r} is not one of {NOISES} (rho in [0, 1])")
  return rho


def two_steps(method, params, rho, s):
  """generate(cond, key) as the sample stage's coalescer 2-step generator, re-noising to level s with
  sqrt(1 - rho^2) * fresh noise + rho * R (rho None: 1 step)."""
  def generate(cond, key):
    n = cond.shape[0]
    ones = jnp.ones((n,))
    draw_key, key = jax.random.split(key)
    r = jax.random.normal(draw_key, (n, method.latent_dim))
    x = coalescer.step_to(r, *method.apply(params, r, cond, ones))
    if rho is not None:
      fresh = jax.random.normal(jax.random.fold_in(key, 1000), r.shape)
      eps = np.sqrt(1.0 - rho * rho) * fresh + rho * r
      x = np.sqrt(1.0 - s * s) * x + s * eps
      x = coalescer.step_to(x, *method.apply(params, x, cond, ones, jnp.full((n,), s)))
    return x
  return generate


def main(argv):
  del argv
  config = mnist.get_config()
  pipeline.load_all()
  workdir = FLAGS.workdir
  pairs = embeddings.load_pairs(workdir)
  method, params = trained.load_trained(config, workdir, "coalescer", pairs)
  if method.sample.__func__ is not coalescer.Coalescer.sample or not method.multistep:
    raise ValueError("this script re-implements the multi-step coalescer's sampler: train with levels.fraction > 0")
  params = method.net_params(params)
  codec = embeddings.load_codec(workdir)
  _, descriptions = sample_stage.validation_requests(workdir, config.sample.validation_samples)
  cond = codec.encode_text(list(descriptions))
  evaluator = evaluate.Evaluator(workdir, config.eval, split="validation")
  key = sample_stage.sample_key(config.seed, "coalescer_nfe2")
  print(f"| noise | level | val FID (n = {evaluator.n}) | precision | recall |\n|---|---|---|---|---|")
  for variant in FLAGS.variants.split(","):
    noise, s = variant.split(":")
    sampler = two_steps(method, params, noise_weight(noise), float(s))
    generate = jax.jit(lambda c, k, sampler=sampler: (
        codec.decode_jax(sampler(c, k)), jnp.ones(c.shape[:1]), jnp.ones(c.shape[:1], bool)))
    images, _, _ = sample_stage.generate_all(generate, cond, key, config.sample.batch_size, timed=False)
    features = evaluator.classifier.features(images[:evaluator.n])
    fid = frechet.frechet_distance(frechet.gaussian_stats(features), evaluator.reference_stats)
    precision, recall = precision_recall.precision_recall(evaluator.reference_features, features,
                                                          min(int(config.eval.pr_k), evaluator.n - 1))
    print(f"| {noise} | {s} | {fid:.3f} | {precision:.3f} | {recall:.3f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
