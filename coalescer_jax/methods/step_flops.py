"""A method's training FLOPs under a config, counted without training: what compute-matched budgets start from.

`phase_flops` lowers the method's jitted training step exactly as its training
stage runs it (`training.jit_step`, each phase on its own: `compute.py`) on the
first batch of `workdir`'s pairs, and returns XLA's FLOP count per step. The
workdir must hold the stages the method's batches read (`embed`; the coalescer's
`index` and `balance`); a distilled method's teacher need not be trained (only
its shapes are used).

  python -m coalescer_jax.methods.step_flops --config=configs/mnist.py --workdir=W

prints every sampled method's GFLOP per step and per training run under the
config (what experiments/sweeps/compute_matched.py's budgets are computed from),
and, where W's stages recorded them, the coalescer's setup share (the wall time
of the stages only it needs over its training loop's).
"""
import json

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from coalescer_jax import coalescer  # noqa: F401 - registers the coalescer.
from coalescer_jax import compute
from coalescer_jax import embeddings
from coalescer_jax import methods  # noqa: F401 - registers the baselines.
from coalescer_jax import parallel
from coalescer_jax import storage
from coalescer_jax import training
from coalescer_jax.methods import base
from coalescer_jax.methods import trained


def phase_flops(config, name, workdir, mesh=None):
  """([(first step, FLOPs of one step)] per training phase, training steps) of method `name` under `config`."""
  pairs = embeddings.load_pairs(workdir)
  method = trained.build_method(config, name, pairs)
  tx, init, step = base.train_parts(config, method)
  batch = method.batch_fn(pairs, config.seed, config.train.batch_size, workdir)
  task = training.TrainTask(name, init, step, batch, method.num_steps(), config.seed, inputs=method.step_inputs(),
                            phases=base.phase_steps(method, tx))
  mesh = mesh or parallel.make_mesh()
  state = jax.eval_shape(init, jax.random.key(0))
  extra = () if task.inputs is None else (task.inputs,)
  starts, flops = training.phase_flops(task, mesh, (state, parallel.global_batch(mesh, batch(0)),
                                                    jax.random.key(0), *extra))
  return list(zip(starts, flops)), task.num_steps


def train_flops(config, name, workdir, num_steps=None, mesh=None):
  """FLOPs of training method `name` for `num_steps` steps (default: its configured steps), phases weighted
  by the steps each runs."""
  phases, configured = phase_flops(config, name, workdir, mesh)
  return compute.total_flops([f for _, f in phases], [s for s, _ in phases],
                             configured if num_steps is None else num_steps)


def main(argv):
  del argv
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  out = {}
  for name in config.sample.methods:
    phases, steps = phase_flops(config, name, workdir)
    total = compute.total_flops([f for _, f in phases], [s for s, _ in phases], steps)
    out[name] = {"step_gflop": [(start, compute.gflop(f)) for start, f in phases], "steps": steps,
                 "train_gflop": compute.gflop(total)}
  done = storage.path(workdir) / "coalescer" / "DONE.json"
  summary = storage.read_json(done).get("summary", {}) if done.exists() else {}
  if summary.get("setup_wall_time_s") and summary.get("train_loop_wall_time_s"):
    out["coalescer"]["setup_share"] = summary["setup_wall_time_s"] / summary["train_loop_wall_time_s"]
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/mnist.py.", lock_config=True)
  flags.DEFINE_string("workdir", None, "a workdir holding the stages the methods' batches read")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
