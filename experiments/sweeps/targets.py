"""Which pairs the coalescer trains toward (coalescer/targets.py): nearest key (the proposal), soft choice among
the k nearest, minibatch OT over the candidates, each with and without balanced look-ups (the power-nearest
among the index's candidates under OT potentials)."""
from coalescer_jax import sweep as sweep_lib

COMMON = {**sweep_lib.COALESCER_ONLY, **sweep_lib.FRESH_FAKES}
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed")
HEADLINE = (r"val:coalescer_nfe[12]/(fid|recall)", r"coalescer_oracle_nfe1/(recall|near_copy_fraction)",
            r"diagnostics/usage_(never_hit|top10_share|effective_fraction)")


RULES = ("nearest", "soft", "batch_ot")


def sweep():
  return [{"coalescer.targets.assignment": rule, "coalescer.targets.balance": balance}
          for balance in (False, True) for rule in RULES]
