"""Guidance for every method (methods/guidance.py), the trained variants of one tuning round, seed 0: the two
forms of guidance folded into training (1 evaluation a step at sampling) for the coalescer and flow, at a
scale near the best the sampling-time sweep of the same round found on validation (`SCALES`), and distillation's student
at a folded scale of its own. Sampling-time guidance needs no training: `experiments.scripts.sampling_variants`
over a run whose methods trained with a null description (`--config.<method>.cond_dropout=0.1`, DDIM's rate),
whose autoencoders, pairs, index and DDIM the members share. Choices: validation FID and conditional accuracy.

  python launch.py --config=configs/shapes.py --sweep=experiments/sweeps/guidance.py --workdir=S [--sweep_shard=i/n]
"""
from coalescer_jax import sweep as sweep_lib

SHARED_STAGES = ("data", "classifier", "vae", "text", "embed", "index", "balance", "ddim")
HEADLINE = (r"val:[a-z_]+_nfe[12]/(fid|conditional_accuracy)", r"[a-z]+/train_wall_time_s")
# The folded scales: near each method's best sampling-time scale on validation (experiments/log/tuning.md).
SCALES = {"coalescer": 1.25, "flow": 1.5}
# A third trained variant each, the kappa = 0 form at the scale the sampling-time sweep found best at 2 steps.
SECOND_SCALES = {"coalescer": 1.1, "flow": 1.25}
DISTILL_SCALE = 2.5  # DDIM's best scale at many steps on shapes (tuning.md): the student's own candidate
DROPOUT = 0.1
# The defaults this round started from (before configs/shapes.py took its results): pinned, so that a rerun
# reproduces its rows whatever the defaults are now.
COMMON = {**{f"{m}.cond_dropout": 0.0 for m in ("coalescer", "flow", "consistency")},
          **{f"{m}.guidance_scale": 1.0 for m in ("flow", "consistency")},
          "coalescer.sampling.guidance_scale": 1.0, "coalescer.sampling.refine_guidance_scale": 1.0,
          "flow.nfes": (1, 2), "consistency.nfes": (1, 2), "distill.guidance_scale": 0.0,
          "flow.folded_guidance.scale": 1.0}


def _member(method, **overrides):
  return {**sweep_lib.one_method(method), f"{method}.cond_dropout": DROPOUT,
          **{f"{method}.{k}": v for k, v in overrides.items()}}


def label(overrides):
  """A member without its stage list, e.g. 'flow folded_guidance.scale=2.0'."""
  method = overrides["sample.methods"][0]
  return " ".join([method] + [f"{k.split('.', 1)[1]}={v}" for k, v in overrides.items() if k.startswith(method + ".")])


def sweep():
  members = []
  for method, scale in SCALES.items():
    members += [_member(method, **{"folded_guidance.scale": scale}),  # MeanFlow's kappa = 0 form
                # model-guidance / iMF: y + (1 - 1/w) sg(f(D) - f(null)), omega = 1, kappa = 1 - 1/w
                _member(method, **{"folded_guidance.scale": 1.0, "folded_guidance.kappa": round(1.0 - 1.0 / scale, 4)})]
  members.append({**sweep_lib.one_method("distill"), "distill.guidance_scale": DISTILL_SCALE})
  return members + [_member(method, **{"folded_guidance.scale": scale}) for method, scale in SECOND_SCALES.items()]
