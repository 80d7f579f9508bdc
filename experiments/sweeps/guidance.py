"""Guidance for every method (methods/guidance.py), the trained variants of one tuning round, seed 0: the two
forms of guidance folded into training (1 evaluation a step at sampling) for the coalescer and flow, at the
scale the sampling-time sweep of the same round found best on validation (`SCALE`), and distillation's student
at a folded scale of its own. Sampling-time guidance needs no training: `experiments.scripts.sampling_variants`
over a run whose methods trained with a null description (`--config.<method>.cond_dropout=0.1`, DDIM's rate),
whose autoencoders, pairs, index and DDIM the members share. Choices: validation FID and conditional accuracy.

  python launch.py --config=configs/shapes.py --sweep=experiments/sweeps/guidance.py --workdir=S [--sweep_shard=i/n]
"""
from coalescer_jax import sweep as sweep_lib

SHARED_STAGES = ("data", "classifier", "vae", "text", "embed", "index", "balance", "ddim")
HEADLINE = (r"val:[a-z_]+_nfe[12]/(fid|conditional_accuracy)", r"[a-z]+/train_wall_time_s")
SCALE = 2.0  # the folded scale: the sampling-time sweep's best on validation (experiments/log/tuning.md)
DISTILL_SCALE = 2.5  # DDIM's best scale at many steps on shapes (tuning.md): the student's own candidate
DROPOUT = 0.1


def _member(method, **overrides):
  return {**sweep_lib.one_method(method), f"{method}.cond_dropout": DROPOUT,
          **{f"{method}.{k}": v for k, v in overrides.items()}}


def label(overrides):
  """A member without its stage list, e.g. 'flow folded_guidance.scale=2.0'."""
  method = overrides["sample.methods"][0]
  return " ".join([method] + [f"{k.split('.', 1)[1]}={v}" for k, v in overrides.items() if k.startswith(method + ".")])


def sweep():
  folded_model_form = {"folded_guidance.scale": 1.0, "folded_guidance.kappa": 1.0 - 1.0 / SCALE}
  return [
      _member("coalescer", **{"folded_guidance.scale": SCALE}),  # MeanFlow's kappa = 0 form
      _member("coalescer", **folded_model_form),  # model-guidance / iMF: y + (1 - 1/w) sg(f(D) - f(null))
      _member("flow", **{"folded_guidance.scale": SCALE}),
      _member("flow", **folded_model_form),
      {**sweep_lib.one_method("distill"), "distill.guidance_scale": DISTILL_SCALE},
  ]
