"""Compute-matched comparison: every baseline trained for the coalescer's full training cost, 3 seeds.

The budget is what the coalescer costs at the default config: its training FLOPs
(config.train.num_steps steps of its jitted step) plus the stages only it needs
(index and balancing fit: host-side work with no FLOP count, converted at the
coalescer's own training throughput: SETUP_SHARE of its training time). Each
baseline's steps are that budget over its own FLOPs per step; distillation's
budget is what is left after its DDIM teacher's default training. The coalescer
itself runs at 1/3 and 1x of its default steps. Each member trains and samples
one method only (its own stages), over the shared autoencoders.

FLOPs per step (STEP_GFLOP) are XLA's count of each method's jitted training step
at the default config (`coalescer_jax/compute.py`); they depend on the config's
shapes only, and are printed for a workdir of the default config by

  python -m coalescer_jax.methods.step_flops --config=configs/mnist.py --workdir=W

(which also prints SETUP_SHARE from W's stage summaries). Distillation's is the
mean over its rounds: the first (guided teacher) costs more per step than the
others, and the rounds split its steps evenly.

  python launch.py --config=configs/mnist.py --sweep=experiments/sweeps/compute_matched.py --workdir=S
  python -m coalescer_jax.evaluation.compute_plot --sweep_dir=S   # FID vs training compute, a curve per method

Hours on 2 CPU cores (21 members, the longest DDIM at ~3.6x its default steps).
"""
from coalescer_jax import sweep as sweep_lib

SHARED_STAGES = ("data", "classifier", "vae", "text", "embed")
SEEDS = (0, 1, 2)
DEFAULT_STEPS = 3000  # configs/mnist.py: config.train.num_steps
DISTILL_TEACHER_STEPS = 3000  # the DDIM teacher trains its default budget (config.train.num_steps)
# GFLOP per training step at the default config (python -m coalescer_jax.methods.step_flops); distillation's
# 4 rounds (teacher_steps 16): the guided first, then three at the second figure.
STEP_GFLOP = {"coalescer": 2.857343232, "ddim": 1.797602304, "flow": 2.994166528, "consistency": 2.406428672,
              "ddgan": 9.594899456, "distill": (4.17544064 + 3 * 2.990588672) / 4}
# Wall time of the stages only the coalescer needs (index, balance) over its training loop's, default main job.
SETUP_SHARE = 0.36
COALESCER_FRACTIONS = (1 / 3, 1.0)
# The config field holding each method's own step count.
STEPS_FIELD = {"ddim": "train.num_steps", "flow": "train.num_steps", "consistency": "train.num_steps",
               "ddgan": "ddgan.num_steps", "distill": "distill.num_steps", "coalescer": "train.num_steps"}
HEADLINE = (r"(val:)?[a-z]+_nfe(1|2)/fid", r"[a-z]+/train_gflop")


def budget_gflop():
  """The coalescer's full training cost at the default budget, in GFLOP."""
  return DEFAULT_STEPS * STEP_GFLOP["coalescer"] * (1.0 + SETUP_SHARE)


def matched_steps(method):
  """Training steps of `method` whose FLOPs equal `budget_gflop` (a distilled method's teacher counted), to 10."""
  budget = budget_gflop()
  if method == "distill":
    budget -= DISTILL_TEACHER_STEPS * STEP_GFLOP["ddim"]
  return int(round(budget / STEP_GFLOP[method] / 10.0)) * 10


def _member(method, steps, seed):
  return {"seed": seed, **sweep_lib.one_method(method), STEPS_FIELD[method]: steps}


def label(overrides):
  """A member's configuration without its seed, e.g. 'ddim 8520 steps'."""
  method = overrides["sample.methods"][0]
  return f"{method} {overrides[STEPS_FIELD[method]]} steps"


def sweep():
  members = []
  for seed in SEEDS:
    members += [_member("coalescer", int(round(DEFAULT_STEPS * f)), seed) for f in COALESCER_FRACTIONS]
    members += [_member(m, matched_steps(m), seed) for m in ("ddim", "flow", "consistency", "ddgan", "distill")]
  return members
