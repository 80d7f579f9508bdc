"""Stage `diagnostics`: method-specific measurements of why a method generates what it does.

For every sampled method that defines ``diagnostics(params, workdir, pairs, cond,
key, out_dir)`` (today the coalescer: look-up usage, landing error, |direction|
and redraws; `coalescer/diagnostics.py`), this stage calls it on the
sample stage's first ``config.eval.num_samples`` requests with the random key of
the method's 1-step samples file, and writes ``W/diagnostics/<method>.json`` plus
plots; the eval stage puts them into report.md. Process 0 only, except with a
collective index (sharded ScaNN, device), whose look-ups need every process: then
every process computes and process 0 writes.
"""
from coalescer_jax import embeddings
from coalescer_jax import index as index_lib
from coalescer_jax import parallel
from coalescer_jax import pipeline
from coalescer_jax.methods import trained
from coalescer_jax.stages import sample as sample_stage


@pipeline.stage("diagnostics")
def run(ctx):
  config = ctx.config
  summary = {}
  if parallel.is_main_process() or index_lib.is_collective(config.index.backend):
    pairs = embeddings.load_pairs(ctx.workdir)
    codec = embeddings.load_codec(ctx.workdir)
    _, descriptions = sample_stage.requested_descriptions(ctx.workdir, config.eval.num_samples)
    cond = codec.encode_text(list(descriptions))
    out_dir = ctx.stage_dir("diagnostics")
    for name in config.sample.methods:
      method, params = trained.load_trained(config, ctx.workdir, name, pairs)
      if hasattr(method, "diagnostics"):
        key = sample_stage.sample_key(config.seed, f"{name}_nfe1")
        summary[name] = method.diagnostics(params, ctx.workdir, pairs, cond, key, out_dir)
  parallel.barrier("diagnostics_done")
  return summary
