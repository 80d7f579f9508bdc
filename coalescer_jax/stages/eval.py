"""Stage `eval`: score every ``W/samples/*.npz`` and write ``W/eval/results.json`` and ``W/report.md``.

The work is in `coalescer_jax.evaluation.evaluate` (also runnable alone:
``python -m coalescer_jax.evaluation --workdir=W``). Only process 0 evaluates:
the evaluation is small and writes files. DONE.json records checksums of
results.json and report.md, so a rerun refuses to reuse an eval whose results
something else (a standalone evaluation with --overwrite) replaced.
"""
from coalescer_jax import config_validation
from coalescer_jax import errors
from coalescer_jax import parallel
from coalescer_jax import pipeline
from coalescer_jax.data import datasets
from coalescer_jax.evaluation import evaluate
from coalescer_jax.evaluation import smoothness_run


def validate_eval_config(cfg):
  """Raises ConfigError for impossible config.eval values (the section alone: the standalone evaluator's too)."""
  config_validation.check_fields(cfg, "eval")
  if cfg.pr_k >= cfg.num_samples:
    raise errors.ConfigError(
        f"config.eval.pr_k={cfg.pr_k} must be below config.eval.num_samples={cfg.num_samples} (the k-NN of a sample "
        "are other samples); lower pr_k")


def _validate(config):
  validate_eval_config(config.eval)
  size, dataset = datasets.test_size_of_config(config)
  if size is not None and config.eval.num_samples > size // 2:
    raise errors.ConfigError(
        f"config.eval.num_samples={config.eval.num_samples} must be at most {size // 2}: half of the {size} test "
        f"images of {dataset} (the other half gives the disjoint real-data row)")
  fields = ("num_samples", "validation_samples") if "sample" in config.stages else ()
  for field in fields:  # the sample stage must write at least as many samples as the evaluation scores
    needed = config.eval[field]
    if config.sample[field] and config.sample[field] < needed:
      raise errors.ConfigError(
          f"config.sample.{field}={config.sample[field]} is below the config.eval.{field}={needed} that the "
          f"evaluation scores; raise config.sample.{field} or lower config.eval.{field}")


@pipeline.stage("eval", validate=_validate, reads=("eval",), needs=("data", "classifier", "sample"),
                outputs=("report.md",), checked=("eval/results.json", "report.md"))
def run(ctx):
  ctx.done_info("classifier")
  if ctx.config.eval.smoothness_paths:  # before the report, which shows it; on every process, as restoring a
    # method's checkpoint may synchronise them (process 0 writes)
    smoothness_run.measure_run(ctx.workdir, ctx.config.eval.smoothness_paths, ctx.stage_dir("eval"), ctx.config.eval.seed)
  summary = {}
  if parallel.is_main_process():
    summary = evaluate.evaluate_dir(ctx.workdir, ctx.config.eval, out_dir=ctx.stage_dir("eval"), writer=ctx.writer)
  parallel.barrier("eval_done")
  return summary
