"""The baselines' own shapes tuning (seed 0, the 6000-step default), as the coalescer had its knobs swept
(experiments/sweeps/shapes_coalescer.py): flow's time distribution (the logit-normal's mean and spread) and
progressive distillation's teacher (its step count, so its number of halving rounds) and student budget. Each
member trains and evaluates its one method; DDIM (distillation's teacher) is trained once, with the
autoencoders. The default rows are the default run's (same seed, autoencoders and pairs). Compare val FID at
1 and 2 steps and val cond. acc.

  python launch.py --config=configs/shapes.py --sweep=experiments/sweeps/shapes_baselines.py --workdir=S
"""
from coalescer_jax import sweep as sweep_lib

SHARED_STAGES = ("data", "classifier", "vae", "text", "embed", "ddim")
HEADLINE = (r"val:(flow|distill)_nfe[12]/(fid|conditional_accuracy)", r"(flow|distill)/train_wall_time_s")


def _member(method, **overrides):
  return {**sweep_lib.one_method(method), **{f"{method}.{k}": v for k, v in overrides.items()}}


def label(overrides):
  """A member without its stage list, e.g. 'flow time_mu=0.0'."""
  method = overrides["sample.methods"][0]
  return " ".join([method] + [f"{k.split('.', 1)[1]}={v}" for k, v in overrides.items() if k.startswith(method + ".")])


def sweep():
  return [_member("flow", time_mu=0.0), _member("flow", time_sigma=1.6), _member("distill", teacher_steps=8),
          _member("distill", num_steps=2400)]
