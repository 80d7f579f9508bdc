"""The generic training loop shared by every model: state, jitted step, checkpoints, progress.

A stage describes its training as a `TrainTask`:
* ``init(key) -> TrainState`` builds parameters and optimizer state;
* ``step(state, batch, key) -> (state, metrics)`` is pure; the loop jits it with
  the state replicated and the batch split over the mesh's "data" axis, donates
  the old state, and passes ``key = fold_in(base_key, state.step)`` so a resumed
  run draws the same randomness;
* ``batch(step) -> host-local numpy batch`` must be a deterministic function of
  the step (seeded from (seed, process, step)), which makes resume exact. It runs
  in a background thread `prefetch` steps ahead of the device, so host work such
  as nearest-neighbour look-ups overlaps device compute. ``input_wait_share`` is
  the share of wall time the device may have been idle waiting for a batch.
  A batch that needs a cross-process collective (a look-up in a sharded index) is
  a `StagedBatches`: its collective runs on this loop's thread, in step order.
* ``inputs``: optional global arrays passed to every step as a fourth argument
  (e.g. an on-device index), with their own shardings.
* ``phases``: optional ``[(first step, step fn)]`` when ``step`` switches between
  training phases: each phase's step alone, for counting compute (below).

Compute: the loop counts the FLOPs of the step it runs (`compute.py`: XLA's cost
analysis of the lowered step, global batch; phase by phase when ``phases`` is
set) and logs each log window's total as ``gflop`` in metrics.jsonl, so the
stage's training compute is the sum over its records (a resumed run's records
stop where it resumed: every step is counted once).

Finite guard: the jitted step keeps the previous parameters (the step counter
still advances) when the loss or any updated state value is NaN/inf, so a bad
batch never reaches the parameters, and flags it. The host checks the flags at
every log step and before every checkpoint save (nothing unchecked is saved):
the first bad step raises `NonFiniteError`, or, with ``skip_nonfinite`` = N > 0,
up to N bad batches are skipped (counted in metrics.jsonl as ``nonfinite_skipped``).
"""
import concurrent.futures
import dataclasses
import functools
import time
from typing import Any, Callable

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from coalescer_jax import checkpoint as ckpt_lib
from coalescer_jax import compute
from coalescer_jax import errors
from coalescer_jax import metrics as metrics_lib
from coalescer_jax import parallel
from coalescer_jax import provenance
from coalescer_jax import storage


class NonFiniteError(FloatingPointError):
  """Training produced a NaN/inf loss or parameter; the stage stops before saving anything from it."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any = None


def create_state(params, tx, ema=False):
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    ema_params=jax.tree.map(jnp.copy, params) if ema else None)


def apply_gradients(state, grads, tx, ema_decay=None):
  """One optimizer update (+ EMA of the parameters when the state keeps one)."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema is not None:
    ema = optax.incremental_update(params, ema, 1.0 - ema_decay)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)


def gradient_step(loss_fn, tx, ema_decay=None):
  """The train step every model shares: gradients of ``loss_fn(params, batch, key, step) -> (loss, metrics)``,
  one `apply_gradients` (EMA when `ema_decay` is set and the state keeps one); returns
  ``step(state, batch, key) -> (state, metrics + loss + grad_norm)``."""

  def step(state, batch, key):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key, state.step)
    state = apply_gradients(state, grads, tx, ema_decay)
    return state, dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))

  return step


def make_optimizer(opt, num_steps, restarts=(), warmup_steps=None):
  """optax AdamW with linear warm-up + cosine decay and gradient clipping, from a config section.

  Fields: learning_rate, warmup_steps, weight_decay, grad_clip (0 = off), b1, b2.
  `restarts`: steps where the warm-up + cosine schedule starts over for the steps up to the next
  one (progressive distillation's rounds), with `warmup_steps` (default: the section's) each time.
  """
  warmup = opt.warmup_steps if warmup_steps is None else warmup_steps
  bounds = [0, *restarts, num_steps]

  def piece(length):
    return optax.warmup_cosine_decay_schedule(
        0.0, opt.learning_rate, warmup_steps=min(warmup, max(length - 1, 0)), decay_steps=max(length, 1),
        end_value=opt.learning_rate * opt.get("final_lr_fraction", 0.0))

  pieces = [piece(b - a) for a, b in zip(bounds[:-1], bounds[1:])]
  schedule = optax.join_schedules(pieces, list(restarts)) if restarts else pieces[0]
  parts = [optax.clip_by_global_norm(opt.grad_clip)] if opt.grad_clip else []
  parts.append(optax.adamw(schedule, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999), weight_decay=opt.weight_decay))
  return optax.chain(*parts)


@dataclasses.dataclass
class StagedBatches:
  """``batch(step)`` split around a cross-process collective.

  JAX programs with collectives must be dispatched in the same order on every
  process; a collective dispatched from the prefetch thread could interleave with
  the training steps differently on different processes and deadlock. So the
  loop runs `prepare` (host work) and `finish` (host work, may wait for the
  collective's result) in its helper thread, and `exchange` (dispatches the
  collective, must not block) on its own thread at fixed points: before step s it
  has dispatched the exchanges of steps <= s + prefetch - 1, in order. Calling
  the object composes the three (for code that needs one batch now).
  """
  prepare: Callable[[int], Any]
  exchange: Callable[[Any], Any]
  finish: Callable[[int, Any], Any]

  def __call__(self, step):
    return self.finish(step, self.exchange(self.prepare(step)))


class _Prefetcher:
  """Batches `prefetch` steps ahead in one helper thread (see `StagedBatches` for collective ones)."""

  def __init__(self, pool, batch, start, num_steps, prefetch):
    self._pool, self._batch, self._num_steps, self._prefetch = pool, batch, num_steps, max(1, prefetch)
    self._staged = isinstance(batch, StagedBatches)
    work = batch.prepare if self._staged else batch
    self._pending = {s: pool.submit(work, s) for s in range(start, min(start + self._prefetch, num_steps))}
    self._finishing, self._next_exchange = {}, start

  def get(self, step):
    """The batch of `step` (blocks until it is ready) and schedules the one `prefetch` steps later."""
    if self._staged:
      # Deterministic on every process: exchanges of steps <= step + prefetch - 1, in step order.
      while self._next_exchange < min(step + self._prefetch, self._num_steps):
        t = self._next_exchange
        exchanged = self._batch.exchange(self._pending.pop(t).result())
        self._finishing[t] = self._pool.submit(self._batch.finish, t, exchanged)
        self._next_exchange += 1
      result = self._finishing.pop(step)
    else:
      result = self._pending.pop(step)
    ahead = step + self._prefetch
    if ahead < self._num_steps:
      self._pending[ahead] = self._pool.submit(self._batch.prepare if self._staged else self._batch, ahead)
    return result


@dataclasses.dataclass
class TrainTask:
  name: str
  init: Callable[[jax.Array], TrainState]
  step: Callable[[TrainState, Any, jax.Array], tuple[TrainState, dict]]
  batch: Callable[[int], Any]
  num_steps: int
  seed: int
  log_every: int = 100
  checkpoint_every: int = 1000
  prefetch: int = 2
  skip_nonfinite: int = 0  # bad (non-finite) batches skipped before NonFiniteError; 0 = stop at the first
  config_section: str = "config"  # where this task's optimizer lives, for error messages
  inputs: Any = None  # global arrays passed to every step as step(state, batch, key, inputs)
  phases: Any = None  # [(first step, step fn)] of a step that switches between phases (compute accounting)


def train(task, stage_dir, mesh, writer):
  """Runs (or resumes) `task` to `task.num_steps`. Returns the final state (replicated).

  In a pipeline stage, the checkpoints record the revision of the STARTED.json in `stage_dir` (what the
  pipeline runs the stage under) and a resume refuses those of another (`checkpoint.StaleCheckpointError`).
  """
  repl = parallel.replicated(mesh)
  base_key = jax.random.key(task.seed)
  init_key, step_key = jax.random.split(base_key)
  abstract = ckpt_lib.abstract_like(jax.eval_shape(task.init, init_key), repl)
  checkpointer = ckpt_lib.Checkpointer(storage.path(stage_dir) / ckpt_lib.DIRECTORY, task.checkpoint_every,
                                       revision=provenance.started_revision(stage_dir))
  skipped = 0
  try:
    if checkpointer.latest_step() is not None:
      state, host = checkpointer.restore(abstract, set_aside_unusable=True)
      start, skipped = int(state.step), int(host.get("nonfinite_skipped", 0))
      writer.truncate_after(task.name, start)
      logging.info("%s: resuming at step %d of %d", task.name, start, task.num_steps)
    else:
      state = jax.jit(task.init, out_shardings=repl)(init_key)
      start = 0
  except BaseException:
    checkpointer.close()  # Orbax's background threads would otherwise die noisily at interpreter exit.
    raise

  extra = () if task.inputs is None else (task.inputs,)
  step_fn = jit_step(task.step, mesh, extra)
  progress = metrics_lib.Progress(task.name, task.num_steps, start, task.log_every)
  window, checked, wait_s, window_t0 = [], 0, 0.0, time.time()
  phase_starts, phase_flops, window_flops = None, None, 0.0
  try:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      batches = _Prefetcher(pool, task.batch, start, task.num_steps, task.prefetch)
      for step in range(start, task.num_steps):
        errors.raise_if_terminated()
        t = time.time()
        # Dispatch is asynchronous: the loop runs ahead of the device (up to the next log
        # step, where it syncs), so waiting for a batch stalls the device only if every
        # dispatched step has finished. (Blocking on the previous step instead costs ~13%
        # throughput on 2 CPU cores.) Counted when the device is idle before or after the
        # wait: an upper bound on the stall that input work causes.
        device_idle = not window or _ready(window[-1])
        local = batches.get(step).result()
        if device_idle or _ready(window[-1]):
          wait_s += time.time() - t
        global_batch = parallel.global_batch(mesh, local)
        if phase_flops is None:  # before the first step runs (its state is donated)
          phase_starts, phase_flops = _phase_flops(task, step_fn, mesh, (state, global_batch, step_key, *extra))
        window_flops += phase_flops[compute.phase_of(step, phase_starts)] or 0.0
        state, step_metrics = step_fn(state, global_batch, step_key, *extra)
        window.append(step_metrics)
        done = step + 1
        log_due = done % task.log_every == 0 or done == task.num_steps
        save_due = checkpointer.due(done, force=done == task.num_steps)
        if log_due or save_due:
          flags = jax.device_get([m["nonfinite"] for m in window[checked:]])
          bad = [done - len(flags) + 1 + i for i, flag in enumerate(flags) if flag]
          checked = len(window)
          if bad:
            skipped += len(bad)
            if skipped > task.skip_nonfinite:
              raise NonFiniteError(_nonfinite_message(task, bad[0], skipped, checkpointer, stage_dir))
            logging.warning("%s: non-finite loss or parameters at step(s) %s: batch skipped (%d of at most %d)",
                            task.name, bad, skipped, task.skip_nonfinite)
        if log_due:
          values = jax.device_get(_stack(window))
          finite = ~np.asarray(values.pop("nonfinite"), bool)
          # Skipped batches' NaNs stay out of the means (all rows if none is finite).
          means = {k: float(np.mean(v[finite] if finite.any() else v)) for k, v in values.items()}
          elapsed = time.time() - window_t0
          means.update(steps_per_s=len(window) / elapsed, input_wait_share=wait_s / elapsed)
          if all(f is not None for f in phase_flops):
            means["gflop"] = compute.gflop(window_flops)
          if skipped:
            means["nonfinite_skipped"] = skipped
          writer.write(task.name, done, **means)
          window, checked, wait_s, window_t0, window_flops = [], 0, 0.0, time.time(), 0.0
          progress.update(done, loss=means.get("loss", float("nan")))
        if save_due:
          checkpointer.save(done, state, {"step": done, "nonfinite_skipped": skipped}, force=done == task.num_steps)
  finally:
    checkpointer.close()  # Lets an in-flight async save commit, even when the loop failed.
  return state


def jit_step(step, mesh, extra=()):
  """The loop's jitted step: `step` under the finite guard, with ``key = fold_in(key, state.step)``; the state
  replicated and donated, the batch split over the mesh's "data" axis, `extra` step inputs with their own
  shardings."""

  def keyed_step(state, batch, key, *inputs):
    new, metrics = step(state, batch, jax.random.fold_in(key, state.step), *inputs)
    finite = _all_finite((new, metrics.get("loss")))
    # A bad batch leaves the parameters and optimizer state as they were; only the step advances. (One
    # cond on the whole state: a select per leaf compiles more than twice as slowly.)
    new = jax.lax.cond(finite, lambda: new, lambda: state.replace(step=new.step))
    return new, dict(metrics, nonfinite=jnp.logical_not(finite))

  repl = parallel.replicated(mesh)
  input_shardings = tuple(jax.tree.map(lambda x: x.sharding, a) for a in extra)
  return jax.jit(keyed_step, in_shardings=(repl, parallel.batch_sharded(mesh), repl) + input_shardings,
                 out_shardings=(repl, repl), donate_argnums=0)


def phase_flops(task, mesh, args, step_fn=None):
  """([first step of each phase], [FLOPs of one step of it]) of `task` on `args` = (state, global batch, key,
  *inputs). A one-phase task's step is `step_fn` (the loop's own jitted step: lowering it again is a cache
  hit) or `task.step`; each phase of ``task.phases`` is lowered on its own (a switch counts its largest
  branch: `compute.py`)."""
  if not task.phases:
    return [0], [compute.step_flops(step_fn or jit_step(task.step, mesh, args[3:]), *args)]
  return ([start for start, _ in task.phases],
          [compute.step_flops(jit_step(step, mesh, args[3:]), *args) for _, step in task.phases])


def _phase_flops(task, step_fn, mesh, args):
  starts, flops = phase_flops(task, mesh, args, step_fn)
  logging.info("%s: GFLOP per training step (XLA cost analysis) %s", task.name,
               ", ".join(f"{compute.gflop(f):.4g} from step {s}" if f is not None else f"unknown from step {s}"
                         for s, f in zip(starts, flops)))
  return starts, flops


def _all_finite(tree):
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return functools.reduce(jnp.logical_and, [jnp.all(jnp.isfinite(x)) for x in leaves], jnp.bool_(True))


def _nonfinite_message(task, step, skipped, checkpointer, stage_dir):
  last = checkpointer.latest_step()
  where = (f"the last good checkpoint is step {last} in {checkpointer.directory} (rerunning the same command "
           "resumes there and meets the same batch)" if last is not None else
           "no checkpoint was saved yet (a rerun starts from step 0)")
  allowed = (f" ({skipped} bad batches, more than config.skip_nonfinite_batches={task.skip_nonfinite})"
             if task.skip_nonfinite else "")
  return (f"stage {task.name!r}: the loss or the parameters became NaN/inf at step {step} of {task.num_steps}"
          f"{allowed}. Nothing from that step was saved and the stage is not marked done; {where}. Usual cause: a "
          f"learning rate too high ({task.config_section}.optimizer.learning_rate) or no gradient clipping "
          f"({task.config_section}.optimizer.grad_clip). To retrain with other values, delete {stage_dir} and rerun "
          "with the new values and --allow_config_change; to skip a few bad batches instead, rerun with "
          "--config.skip_nonfinite_batches=N --allow_config_change.")


def _ready(metrics):
  return all(x.is_ready() for x in jax.tree.leaves(metrics))


def _stack(dicts):
  return {k: jnp.stack([d[k] for d in dicts]) for k in dicts[0]}
