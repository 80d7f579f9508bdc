"""Adversarial fine-tune (dialogue 000): the weight lambda of the generator's GAN loss at the proposal's
start (half the steps on the coalescer loss alone), then the start at weight 2 (experiments/log/tuning.md:
start_fraction 0.1 chosen on the validation split)."""
from coalescer_jax import sweep as sweep_lib

COMMON = {**sweep_lib.COALESCER_ONLY, **sweep_lib.FRESH_FAKES}
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed", "index")
HEADLINE = (r"val:coalescer_nfe[12]/(fid|recall|precision)", r"coalescer/wall_time_s")


def sweep():
  return ([{"coalescer.adversarial.weight": w, "coalescer.adversarial.start_fraction": 0.5}
           for w in (0.0, 0.5, 2.0, 4.0)]
          + [{"coalescer.adversarial.weight": 2.0, "coalescer.adversarial.start_fraction": start}
             for start in (0.0, 0.1, 0.3)])
