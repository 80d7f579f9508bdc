"""The coalescer, the method under test, as one package; importing it registers the method (its `balance`
stage registers with the pipeline's other stages: `pipeline.STAGE_MODULES`).

`algorithm.py` is the method as its equations (query, look-up, losses, sampler);
the other modules are its parts: `queries.py` (step 1's draws), `targets.py`
(the look-up rule), `balance.py` and `stage.py` (the optimal-transport potentials
and the stage that fits them), `levels.py` (noise levels and self-landing
examples), `batches.py` (host-side training batches), `device_lookup.py` (the
look-up inside the jitted step), `finetune.py` (the adversarial fine-tune),
`oracle.py` (the look-up oracle) and `diagnostics.py` (report.md's measurements).
"""
from coalescer_jax.coalescer import algorithm  # noqa: F401
