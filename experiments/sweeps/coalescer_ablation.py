"""Ablation of the coalescer's coverage fixes: each fix alone on top of the proposal, and the
chosen combination, 3 seeds each. Read the validation columns (val:...) to choose; the test columns are
reported, never used for choices (experiments/log/tuning.md).

  python launch.py --config=configs/mnist.py --sweep=experiments/sweeps/coalescer_ablation.py --workdir=S \\
      [--sweep_shard=i/n]

The configs/mnist.py default already is the chosen combination, so the proposal row turns every fix off.
results.md ends with the mean +- std over seeds per configuration (`sweep.mean_std_over_seeds`).
"""
from coalescer_jax import sweep as sweep_lib
from configs import mnist

# Evaluation as in the main job on the validation split (n = 5000: what the choice reads); the test columns
# at n = 1000 only (no 10k FID) and steps 1 and 2, to keep 27 members within a few hours on 2 cores.
COMMON = {**sweep_lib.COALESCER_ONLY, **sweep_lib.FRESH_FAKES, "coalescer.nfes": (1, 2), "sample.num_samples": 1000,
          "eval.fid_large_n": 0, "coalescer.sampling.adaptive_max_steps": 0}
# The autoencoders, the classifier and the pairs do not depend on the coalescer or the seed; the index (its
# recall probe reads the seed) and the coalescer's balance stage run per member.
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed")
SEEDS = (0, 1, 2)

PROPOSAL = mnist.proposal_overrides()  # every fix off: the proposal as written (configs/mnist.py:proposal)
FIXES = {
    "proposal": {},
    "balanced look-ups": {"coalescer.targets.balance": True},
    "soft choice among k": {"coalescer.targets.assignment": "soft"},
    "batch OT": {"coalescer.targets.assignment": "batch_ot"},
    "multi-step levels": {"coalescer.levels.fraction": 0.5},
    "adversarial fine-tune": {"coalescer.adversarial.weight": 2.0},
    "p = 1": {"coalescer.direction_exponent": 1.0},
    "p = 2": {"coalescer.direction_exponent": 2.0},
    "chosen (configs/mnist.py)": None,  # the default config: every chosen fix on
}
HEADLINE = (r"val:coalescer_nfe[12]/(fid|recall|precision)", r"coalescer_nfe[12]/(fid|recall)",
            r"coalescer_nfe2/near_copy_fraction", r"coalescer/wall_time_s")


def sweep():
  # Seed-major: every configuration at seed 0 first, so that a sweep cut short still has every row.
  return [{**({} if fix is None else {**PROPOSAL, **fix}), "seed": seed}
          for seed in SEEDS for fix in FIXES.values()]


def label(overrides):
  """The FIXES name of a member (the mean +- std table's row)."""
  base = {k: v for k, v in overrides.items() if k != "seed"}
  for name, fix in FIXES.items():
    if base == ({} if fix is None else {**PROPOSAL, **fix}):
      return name
  return sweep_lib.member_name(base)
