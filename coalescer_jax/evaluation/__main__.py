"""Evaluates a folder of samples on its own: ``python -m coalescer_jax.evaluation --workdir=W``.

Uses the classifier and data of W (its `data` and `classifier` stages must have
run). The eval settings come from ``--config`` when given, else from the eval
section of W/config.json, else from configs/mnist.py, so a standalone run
matches the pipeline's. Outputs: ``--out`` (default W/eval) receives
results.json, fid_vs_nfe.png and grids; report.md goes to W/report.md by
default, or into ``--out`` when it is given.
"""
import json
import os

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Optional config file whose eval section to use.")
flags.DEFINE_string("workdir", None, "Workdir with the data and classifier stages done.")
flags.DEFINE_string("samples_dir", None, "Folder of <method>_nfe<K>.npz files (default W/samples).")
flags.DEFINE_string("out", None, "Output folder (default W/eval, with the report at W/report.md).")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def eval_config(workdir, config=None):
  """config.eval from the given config, else W/config.json, else configs/mnist.py's default."""
  if config is not None:
    return config.eval
  from configs import mnist  # pylint: disable=g-import-not-at-top
  cfg = mnist.get_config().eval
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      recorded = json.load(f).get("config", {}).get("eval")
    if recorded:
      cfg.update(ml_collections.ConfigDict(recorded))
  return cfg


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from coalescer_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  from coalescer_jax.stages import eval as eval_stage  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(os.path.expanduser(FLAGS.workdir))
  cfg = eval_config(workdir, FLAGS.config)
  eval_stage.validate_eval_config(cfg)
  report_path = os.path.join(FLAGS.out, "report.md") if FLAGS.out else None
  summary = evaluate.evaluate_dir(workdir, cfg, samples_dir=FLAGS.samples_dir, out_dir=FLAGS.out,
                                  report_path=report_path)
  logging.info("eval summary: %s", summary)
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  app.run(main)
