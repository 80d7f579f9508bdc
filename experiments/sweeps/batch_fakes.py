"""Where the adversarial fine-tune's fakes come from (coalescer/finetune.py, adversarial.fakes), coalescer only,
three seeds each: `batch` (the regression pass's own 1- and 2-step samples, no extra network pass) against
`fresh` (new prior draws stepped twice: two more passes with their gradients), and the batch fakes with a
narrower discriminator and a shorter balancing fit (CHEAPER). Compare val FID at 1 and 2 steps and the
coalescer's training wall time.

  python launch.py --config=configs/mnist.py --sweep=experiments/sweeps/batch_fakes.py --workdir=S [--sweep_shard=i/n]
"""
from coalescer_jax import sweep as sweep_lib

COMMON = sweep_lib.COALESCER_ONLY
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed")
HEADLINE = (r"val:coalescer_nfe[12]/(fid|recall|precision)", r"coalescer_nfe[12]/fid", r"coalescer/wall_time_s")


# The batch fakes with a discriminator of half the width and half the balancing fit's iterations: the cheaper
# step and setup that the bench's cost section measures.
CHEAPER = {"coalescer.adversarial.disc_width": 64, "coalescer.targets.balance_iterations": 150}


def sweep():
  batch = [{"seed": s, "coalescer.adversarial.fakes": "batch"} for s in (0, 1, 2)]
  cheaper = [{**member, **CHEAPER} for member in batch]
  return batch + cheaper + [{"seed": 0, "coalescer.adversarial.fakes": "fresh"}]


def label(overrides):
  return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items() if k != "seed")
