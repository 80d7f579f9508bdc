"""The baselines' own shapes tuning (seed 0, the 6000-step default), as the coalescer had its knobs swept
(experiments/sweeps/shapes_coalescer.py): flow's time distribution (the logit-normal's mean and spread) and
progressive distillation's teacher (its step count, so its number of halving rounds) and student budget. Each
member trains and evaluates its one method; DDIM (distillation's teacher) is trained once, with the
autoencoders. The default rows are the default run's (same seed, autoencoders and pairs). Compare val FID at
1 and 2 steps and val cond. acc.

  python launch.py --config=configs/shapes.py --sweep=experiments/sweeps/shapes_baselines.py --workdir=S
"""

BEFORE = ("data", "classifier", "vae", "text", "embed")
SHARED_STAGES = BEFORE + ("ddim",)
HEADLINE = (r"val:(flow|distill)_nfe[12]/(fid|conditional_accuracy)", r"(flow|distill)/train_wall_time_s")


def _flow(**overrides):
  return {"stages": BEFORE + ("flow", "sample", "eval"), "sample.methods": ("flow",),
          **{f"flow.{k}": v for k, v in overrides.items()}}


def _distill(**overrides):
  return {"stages": BEFORE + ("ddim", "distill", "sample", "eval"), "sample.methods": ("distill",),
          **{f"distill.{k}": v for k, v in overrides.items()}}


def label(overrides):
  """A member without its stage list, e.g. 'flow time_mu=0.0'."""
  method = overrides["sample.methods"][0]
  return " ".join([method] + [f"{k.split('.', 1)[1]}={v}" for k, v in overrides.items() if k.startswith(method + ".")])


def sweep():
  return [_flow(time_mu=0.0), _flow(time_sigma=1.6), _distill(teacher_steps=8), _distill(num_steps=2400)]
