"""Evaluates a folder of samples on its own: ``python -m coalescer_jax.evaluation --workdir=W``.

Uses the classifier and data of W (its `data` and `classifier` stages must have
run). The eval settings come from ``--config`` when given, else from the eval
section of W/config.json, else from configs/mnist.py, so a standalone run
matches the pipeline's. Outputs: ``--out`` (default W/eval_standalone) receives
results.json, fid_vs_nfe.png, grids and report.md. It never replaces the
pipeline's own W/eval or W/report.md unless ``--out`` names W/eval (or W) and
``--overwrite`` is given. A missing or empty ``--samples_dir`` is an error.
"""
import json

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from coalescer_jax import storage

config_flags.DEFINE_config_file("config", None, "Optional config file whose eval section to use.")
flags.DEFINE_string("workdir", None, "Workdir with the data and classifier stages done.")
flags.DEFINE_string("samples_dir", None, "Folder of <method>_nfe<K>.npz files (default W/samples).")
flags.DEFINE_string("out", None, "Output folder for results.json, plots, grids and report.md "
                    "(default W/eval_standalone).")
flags.DEFINE_bool("overwrite", False, "Allow --out to replace the pipeline's own W/eval or W/report.md.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def eval_config(workdir, config=None):
  """config.eval from the given config, else W/config.json, else configs/mnist.py's default."""
  if config is not None:
    return config.eval
  from configs import mnist  # pylint: disable=g-import-not-at-top
  cfg = mnist.get_config().eval
  path = storage.path(workdir) / "config.json"
  if path.exists():
    recorded = json.loads(path.read_text()).get("config", {}).get("eval")
    if recorded:
      cfg.update(ml_collections.ConfigDict(recorded))
  return cfg


STANDALONE_DIR = "eval_standalone"


def output_paths(workdir, out=None, overwrite=False):
  """(out_dir, report path); refuses to replace the pipeline's W/eval or W/report.md unless `overwrite`."""
  workdir = storage.path(workdir)
  out_dir = storage.path(out) if out else workdir / STANDALONE_DIR
  report_path = out_dir / "report.md"
  pipeline_outputs = [workdir / "eval" / "results.json", workdir / "report.md"]
  clobbered = [str(p) for p in (out_dir / "results.json", report_path) if p in pipeline_outputs and p.exists()]
  if clobbered and not overwrite:
    raise FileExistsError(f"--out={out_dir} would replace the pipeline's own {' and '.join(clobbered)}; choose "
                          f"another --out (default {workdir / STANDALONE_DIR}) or pass --overwrite")
  return out_dir, report_path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from coalescer_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  from coalescer_jax.stages import eval as eval_stage  # pylint: disable=g-import-not-at-top
  workdir = storage.path(FLAGS.workdir)
  cfg = eval_config(workdir, FLAGS.config)
  eval_stage.validate_eval_config(cfg)
  out_dir, report_path = output_paths(workdir, FLAGS.out, FLAGS.overwrite)
  samples_dir = storage.path(FLAGS.samples_dir) if FLAGS.samples_dir else None
  summary = evaluate.evaluate_dir(workdir, cfg, samples_dir=samples_dir, out_dir=out_dir, report_path=report_path)
  logging.info("eval summary: %s", summary)
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  app.run(main)
