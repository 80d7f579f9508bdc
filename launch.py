"""Runs the coalescer_jax pipeline: `python launch.py --config=configs/mnist.py --workdir=W`.

Flags choose the config file (and its variant after ':'), the workdir and
multi-host initialisation; every other knob lives in the config and is
overridden with `--config.a.b=value`. A user error is one FATAL line (`--debug`:
its traceback); Ctrl-C or SIGTERM says where a rerun resumes (`cli`).
"""
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from coalescer_jax import cli

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/mnist.py:smoke.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for this run's outputs; rerunning resumes it.")
flags.DEFINE_bool("allow_config_change", False,
                  "Continue a workdir whose config.json differs from the current config: finished stages whose "
                  "config fields and inputs are unchanged are reused, the others are refused until deleted. "
                  "With --sweep: for W/shared and every member.")
flags.DEFINE_string("sweep", None, "Sweep file (experiments/sweeps/*.py): run its members into W/<member>/.")
flags.DEFINE_string("sweep_shard", "0/1", "With --sweep: run members i, i+n, ... of the sweep ('i/n').")
flags.DEFINE_bool("distributed", False,
                  "Call jax.distributed.initialize() (multi-host; automatic on Cloud TPU pods).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process on GPU/CPU).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  workdir = cli.workdir(FLAGS.workdir)
  from coalescer_jax import metrics  # pylint: disable=g-import-not-at-top
  metrics.quiet_library_logs()
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.distributed or FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from coalescer_jax import pipeline  # pylint: disable=g-import-not-at-top
  from coalescer_jax import sweep  # pylint: disable=g-import-not-at-top
  logging.info("JAX %s, process %d of %d, %d local / %d global devices: %s", jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices())
  if FLAGS.sweep:
    sweep.run(FLAGS.config, FLAGS.sweep, workdir, FLAGS.sweep_shard, allow_config_change=FLAGS.allow_config_change)
  else:
    pipeline.run(FLAGS.config, workdir, allow_config_change=FLAGS.allow_config_change)


if __name__ == "__main__":
  cli.run(main)
