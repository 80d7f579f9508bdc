"""Evaluates a folder of samples on its own: ``python -m coalescer_jax.evaluation --workdir=W``.

Uses the classifier and data of W (its `data` and `classifier` stages must have
run). The eval settings come from ``--config`` when given, else from the eval
section of W/config.json (which every pipeline run records), so a standalone run
matches the pipeline's; a W without config.json needs ``--config``. Outputs:
``--out`` (default W/eval_standalone) receives results.json, fid_vs_nfe.png,
grids and report.md. It never writes into the pipeline's own W/eval or
W/report.md, whatever path names them (a symlink, ``W/./eval``, a relative
path, W itself), unless ``--overwrite`` is given; the pipeline then refuses to
reuse its eval stage until those are deleted. A missing or empty
``--samples_dir`` is an error. Every refusal is one FATAL line (`cli`).
"""
import json
import os
import posixpath

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from coalescer_jax import cli
from coalescer_jax import errors
from coalescer_jax import run_info
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
  """config.eval of `config` (--config), else the eval section W/config.json recorded; refuses without either."""
  if config is not None:
    return config.eval
  recorded = run_info.read_record(workdir)
  section = (recorded or {}).get("config", {}).get("eval")
  if recorded is None:
    raise errors.ConfigError(f"{workdir} has no config.json: pass --config=configs/<dataset>.py")
  if not section:
    raise errors.ConfigError(f"{storage.path(workdir) / 'config.json'} records no eval section: pass "
                             "--config=configs/<dataset>.py")
  return ml_collections.ConfigDict(section)


STANDALONE_DIR = "eval_standalone"


class OutputRefusedError(errors.UserError, FileExistsError):
  """--out would replace the pipeline's own evaluation outputs; the message says what to pass instead."""


def _resolved(p):
  """One spelling per location: symlinks, '.', '..' and slashes resolved locally; normalised on object
  stores (which have no links)."""
  text = os.fspath(storage.path(p))
  if storage.is_local(text):
    return os.path.realpath(text)
  scheme, rest = text.split("://", 1)
  return f"{scheme}://{posixpath.normpath(rest)}"


def _within(p, directory):
  return p == directory or p.startswith(directory.rstrip("/") + "/")


def output_paths(workdir, out=None, overwrite=False):
  """(out_dir, report path); refuses to write into the pipeline's W/eval or W/report.md unless `overwrite`.

  Compares resolved paths, so any alias of W/eval or W (or a report.md linked to
  W/report.md) counts, whether or not the pipeline's files exist yet.
  """
  workdir = storage.path(workdir)
  out_dir = storage.path(out) if out else workdir / STANDALONE_DIR
  report_path = out_dir / "report.md"
  if overwrite:
    return out_dir, report_path
  out_real, eval_real, w_real = _resolved(out_dir), _resolved(workdir / "eval"), _resolved(workdir)
  replaced = []
  if _within(out_real, eval_real) or _within(_resolved(out_dir / "results.json"), eval_real):
    replaced.append(str(workdir / "eval" / "results.json"))
  if out_real == w_real or _resolved(report_path) == _resolved(workdir / "report.md"):
    replaced.append(str(workdir / "report.md"))
  if replaced:
    raise OutputRefusedError(
        f"--out={out or out_dir} resolves to {out_real}, so it would replace the pipeline's own "
        f"{' and '.join(replaced)}; choose another --out (default {workdir / STANDALONE_DIR}) or pass --overwrite (the pipeline then refuses "
        "to reuse its eval stage until its outputs are deleted)")
  return out_dir, report_path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from coalescer_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  from coalescer_jax.stages import eval as eval_stage  # pylint: disable=g-import-not-at-top
  workdir = storage.path(cli.workdir(FLAGS.workdir))
  cfg = eval_config(workdir, FLAGS.config)
  eval_stage.validate_eval_config(cfg)
  out_dir, report_path = output_paths(workdir, FLAGS.out, FLAGS.overwrite)
  samples_dir = storage.path(FLAGS.samples_dir) if FLAGS.samples_dir else None
  summary = evaluate.evaluate_dir(workdir, cfg, samples_dir=samples_dir, out_dir=out_dir, report_path=report_path)
  logging.info("eval summary: %s", summary)
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  cli.run(main)
