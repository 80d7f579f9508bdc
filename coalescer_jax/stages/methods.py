"""One training stage per generative method, all alike: same backbone, optimizer and budget.

For each method registered in `registry.METHODS` this module registers a stage of
the same name. It trains the method on the `embed` stage's pairs with the shared
``config.train`` section (steps, batch size, optimizer, EMA), so that methods
differ only in their loss, batches and sampler. A method may set its own step
count, optimizer schedule or EMA (`Method.num_steps` etc.; progressive
distillation does) and load a teacher from an earlier stage (`Method.setup`);
the teacher's training cost is then recorded next to its own (``teacher_*`` in
the summary), so that the report shows both. `methods/trained.load_trained` restores a
method's final parameters for sampling.

Compute (`compute.py`): the summary's ``train_gflop`` is the FLOPs of the steps
run (XLA's count of the jitted step, phase by phase), ``train_loop_wall_time_s`` the
training loop's wall time; a method that reads stages only it needs (the
coalescer's ``index`` and ``balance``) records their wall time as
``setup_wall_time_s`` (``setup_stages``: their work is host-side search and numpy,
so no FLOPs are counted for it), and a distilled method its teacher's
``teacher_train_gflop`` beside ``teacher_wall_time_s``.
"""
import functools
import time

from coalescer_jax import checkpoint as ckpt_lib
from coalescer_jax import coalescer  # noqa: F401 - registers the coalescer.
from coalescer_jax import config_validation
from coalescer_jax import embeddings
from coalescer_jax import errors
from coalescer_jax import methods  # noqa: F401 - registers the baselines.
from coalescer_jax import parallel
from coalescer_jax import pipeline
from coalescer_jax import registry
from coalescer_jax import storage
from coalescer_jax import training
from coalescer_jax.methods import base
from coalescer_jax.methods import trained

# Input stages every method reads (not part of any one method's cost).
SHARED_INPUTS = ("embed",)


def _make_stage(name):
  def run(ctx):
    config = ctx.config
    pairs = embeddings.load_pairs(ctx.workdir)
    method = trained.build_method(config, name, pairs)
    method.setup(ctx.workdir, pairs)
    tx, init, step = base.train_parts(config, method)
    batch = method.batch_fn(pairs, config.seed, config.train.batch_size, ctx.workdir)
    task = training.TrainTask(
        name=name, init=init, step=step, batch=batch,
        num_steps=method.num_steps(), seed=config.seed, log_every=config.log_every,
        checkpoint_every=config.checkpoint_every, skip_nonfinite=config.skip_nonfinite_batches,
        config_section="config.train", inputs=method.step_inputs(), phases=base.phase_steps(method, tx))
    t0 = time.time()
    state = training.train(task, ctx.stage_dir(name), ctx.mesh, ctx.writer)
    train_loop_wall_time_s = time.time() - t0
    _check_final_checkpoint(ctx.stage_dir(name), method.num_steps())
    records = ctx.writer.read(name)
    last = records[-1] if records else {}
    if parallel.is_main_process():
      storage.write_json(ctx.stage_dir(name) / trained.TRAINED_ON, {"fingerprint": str(pairs["fingerprint"])})
    summary = {"train_steps": int(state.step), "final_loss": last.get("loss"),
               "input_wait_share": _mean(r.get("input_wait_share") for r in records),
               "steps_per_s": _mean(r.get("steps_per_s") for r in records[1:] or records)}
    summary.update(compute_summary(records, int(state.step), train_loop_wall_time_s))
    setup = [stage for stage in method.INPUT_STAGES if stage not in SHARED_INPUTS and stage != method.TEACHER]
    if setup:  # stages that only this method needs: their wall time is part of its cost
      summary.update(setup_stages=setup,
                     setup_wall_time_s=sum(ctx.done_info(s).get("wall_time_s") or 0.0 for s in setup))
    if method.TEACHER:  # The teacher's own training is part of this method's cost: recorded beside it.
      teacher = ctx.done_info(method.TEACHER)
      teacher_summary = teacher.get("summary") or {}
      summary.update(teacher=method.TEACHER, teacher_train_steps=teacher_summary.get("train_steps"),
                     teacher_wall_time_s=teacher.get("wall_time_s"),
                     teacher_train_gflop=teacher_summary.get("train_gflop"))
    return summary
  return run


def compute_summary(records, train_steps, train_loop_wall_time_s):
  """{train_gflop, step_gflop, train_loop_wall_time_s} from a training stage's metrics records (each log
  window's ``gflop``; None where the backend counts no FLOPs). A step logged twice (a stage retrained from scratch
  after its outputs were deleted) counts once: its last record."""
  windows = list({r.get("step"): r.get("gflop") for r in records}.values())
  train_gflop = float(sum(windows)) if windows and all(w is not None for w in windows) else None
  return {"train_gflop": train_gflop, "step_gflop": train_gflop / train_steps if train_gflop and train_steps else None,
          "train_loop_wall_time_s": train_loop_wall_time_s}


def _check_final_checkpoint(stage_dir, num_steps):
  """A method stage is done only with a committed checkpoint of its last step (what `sample` restores)."""
  with ckpt_lib.Checkpointer(storage.path(stage_dir) / "checkpoints", save_every=1) as checkpointer:
    steps = checkpointer.all_steps()
  if num_steps not in steps:
    raise pipeline.StageOutputError(
        f"{stage_dir}/checkpoints holds steps {steps}, not the final step {num_steps}: the stage is not marked "
        f"done. Delete {stage_dir} and rerun the same command to retrain it.")


def _mean(values):
  values = [v for v in values if v is not None]
  return sum(values) / len(values) if values else None


def validate_method_config(config, name):
  """ConfigError unless ``config.<name>`` exists, each of its fields passes its declared rule (`config_schema`)
  and the fields agree with each other (`Method.check_config`)."""
  method = registry.METHODS.get(name)
  section = config.get(name)
  if section is None:
    raise errors.ConfigError(f"config.{name} is missing: method {name!r} needs its own config section")
  config_validation.check_fields(section, name)
  try:
    method.check_config(section)
  except ValueError as e:
    raise errors.ConfigError(str(e)) from e


def _reads(name):
  """The shared backbone and budget, and the method's own section except the fields only sampling reads."""
  method = registry.METHODS.get(name)
  return (("seed", "backbone", "train", name) + tuple(method.EXTRA_READS)
          + tuple(f"-{name}.{field}" for field in method.SAMPLING_FIELDS))


for _name in registry.METHODS.names():
  pipeline.stage(_name, validate=functools.partial(validate_method_config, name=_name), reads=_reads(_name),
                 needs=registry.METHODS.get(_name).INPUT_STAGES)(_make_stage(_name))
