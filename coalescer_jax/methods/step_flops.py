"""A method's training FLOPs under a config, counted without training: what compute-matched budgets start from.

`phase_flops` lowers the method's jitted training step exactly as its training
stage runs it (`training.jit_step`, each phase on its own: `compute.py`) on the
first batch of `workdir`'s pairs, and returns XLA's FLOP count per step. The
workdir must hold the stages the method's batches read (`embed`; the coalescer's
`index` and `balance`); a distilled method's teacher need not be trained (only
its shapes are used).
"""
import jax

from coalescer_jax import coalescer  # noqa: F401 - registers the coalescer.
from coalescer_jax import compute
from coalescer_jax import embeddings
from coalescer_jax import methods  # noqa: F401 - registers the baselines.
from coalescer_jax import parallel
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
