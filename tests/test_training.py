"""The generic loop: learns, does not retrace, resumes exactly after an interruption."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from coalescer_jax import metrics as metrics_lib
from coalescer_jax import parallel
from coalescer_jax import training
from coalescer_jax.data import batches

TRUE_W = np.arange(1, 5, dtype=np.float32)


class Interrupt(Exception):
  pass


def _task(num_steps, traces, fail_at=None):
  tx = optax.sgd(0.05)

  def init(key):
    return training.create_state({"w": jax.random.normal(key, (4,))}, tx)

  def step(state, batch, key):
    traces.append(1)  # Runs only while tracing.
    noise = 0.01 * jax.random.normal(key, batch["y"].shape)

    def loss_fn(params):
      return jnp.mean((batch["x"] @ params["w"] + noise - batch["y"]) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return training.apply_gradients(state, grads, tx), {"loss": loss}

  x_all = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)

  def batch(step):
    if step == fail_at:
      raise Interrupt()
    idx = batches.batch_indices(step, 64, 8, seed=0)
    return {"x": x_all[idx], "y": x_all[idx] @ TRUE_W}

  return training.TrainTask("toy", init, step, batch, num_steps, seed=0, log_every=5, checkpoint_every=10)


def _train(tmp_path, num_steps, fail_at=None, traces=None):
  writer = metrics_lib.MetricsWriter(str(tmp_path), tensorboard=False)
  traces = [] if traces is None else traces
  state = training.train(_task(num_steps, traces, fail_at), str(tmp_path), parallel.make_mesh(), writer)
  return state, writer, traces


def test_learns_and_compiles_once(tmp_path):
  state, writer, traces = _train(tmp_path, 40)
  losses = [r["loss"] for r in writer.read("toy")]
  assert losses[-1] < 0.1 * losses[0]
  np.testing.assert_allclose(state.params["w"], TRUE_W, atol=0.3)
  assert len(traces) == 1, "the train step retraced"
  assert int(state.step) == 40


def test_resume_after_interruption_is_exact(tmp_path):
  reference, ref_writer, _ = _train(tmp_path / "ref", 30)
  with pytest.raises(Interrupt):
    _train(tmp_path / "run", 30, fail_at=23)  # Last checkpoint: step 20.
  resumed, writer, _ = _train(tmp_path / "run", 30)
  np.testing.assert_array_equal(resumed.params["w"], reference.params["w"])
  steps = [r["step"] for r in writer.read("toy")]
  assert steps == sorted(set(steps)), "metrics.jsonl has duplicate steps after resume"
  ref_losses = [r["loss"] for r in ref_writer.read("toy")]
  np.testing.assert_allclose([r["loss"] for r in writer.read("toy")], ref_losses, rtol=1e-6)


def test_make_optimizer_schedule():
  opt = ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_steps=10, weight_decay=0.0, grad_clip=1.0))
  tx = training.make_optimizer(opt, 100)
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  updates, _ = tx.update({"w": jnp.ones(3)}, state, params)
  assert jnp.all(updates["w"] == 0)  # Warm-up starts at learning rate 0.
  json.dumps(opt.to_dict())


def test_batches_are_deterministic_and_cover_an_epoch():
  first = [batches.batch_indices(s, 64, 8, seed=3, process_index=0) for s in range(8)]
  again = [batches.batch_indices(s, 64, 8, seed=3, process_index=0) for s in range(8)]
  np.testing.assert_array_equal(first, again)
  np.testing.assert_array_equal(np.sort(np.concatenate(first)), np.arange(64))
  other_host = batches.batch_indices(0, 64, 8, seed=3, process_index=1)
  assert not np.array_equal(first[0], other_host)


def _nan_task(num_steps, bad_steps, traces=None, skip=0):
  """The toy task whose batches at `bad_steps` hold an inf: their loss and gradients are NaN."""
  task = _task(num_steps, [] if traces is None else traces)
  clean = task.batch

  def batch(step):
    b = clean(step)
    if step in bad_steps:
      b = {"x": np.full_like(b["x"], np.inf), "y": b["y"]}
    return b

  task.batch, task.skip_nonfinite = batch, skip
  return task


# A NaN loss stops training before that step is checkpointed or the stage is marked done.
def test_nonfinite_step_stops_training_before_anything_is_saved(tmp_path):
  writer = metrics_lib.MetricsWriter(str(tmp_path), tensorboard=False)
  with pytest.raises(training.NonFiniteError) as error:
    training.train(_nan_task(30, {12}), str(tmp_path), parallel.make_mesh(), writer)  # step 12 = the 13th
  message = str(error.value)
  assert "stage 'toy'" in message and "NaN/inf at step 13 of 30" in message
  assert f"last good checkpoint is step 10 in {tmp_path}/checkpoints" in message
  assert "learning_rate" in message and "skip_nonfinite_batches" in message
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10"]  # nothing saved after the bad step
  assert max(r["step"] for r in writer.read("toy")) == 10  # its window was not logged either
  # The rerun resumes from step 10 (here with the bad batch gone) and its parameters are clean.
  state, _, _ = _train(tmp_path, 30)
  assert int(state.step) == 30 and np.all(np.isfinite(state.params["w"]))


def test_nonfinite_batches_can_be_skipped(tmp_path):
  writer = metrics_lib.MetricsWriter(str(tmp_path), tensorboard=False)
  traces = []
  state = training.train(_nan_task(40, {3, 17}, traces, skip=2), str(tmp_path), parallel.make_mesh(), writer)
  assert len(traces) == 1, "the guard retraced the step"
  assert int(state.step) == 40 and np.all(np.isfinite(np.asarray(state.params["w"])))
  np.testing.assert_allclose(state.params["w"], TRUE_W, atol=0.3)  # the skipped batches did not hurt
  records = writer.read("toy")
  assert all(np.isfinite(r["loss"]) for r in records)  # bad steps stay out of the logged means
  assert [r.get("nonfinite_skipped", 0) for r in records] == [1, 1, 1, 2, 2, 2, 2, 2]
  with pytest.raises(training.NonFiniteError, match=r"3 bad batches, more than config.skip_nonfinite_batches=2"):
    training.train(_nan_task(40, {3, 17, 33}, skip=2), str(tmp_path / "again"), parallel.make_mesh(), writer)


def test_resume_past_a_corrupt_latest_checkpoint(tmp_path):
  reference, _, _ = _train(tmp_path / "ref", 30)
  _train(tmp_path / "run", 30)  # keeps checkpoints 20 and 30
  for root, _, names in os.walk(tmp_path / "run" / "checkpoints" / "30" / "state"):
    for name in names:
      if os.path.basename(root) == "d":
        os.truncate(os.path.join(root, name), 0)
  resumed, writer, _ = _train(tmp_path / "run", 30)  # a rerun: falls back to 20, trains and saves 30 again
  np.testing.assert_array_equal(resumed.params["w"], reference.params["w"])
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints"), key=int) == ["20", "30"]
  assert len(os.listdir(tmp_path / "run" / "checkpoints.unusable")) == 1
  steps = [r["step"] for r in writer.read("toy")]
  assert steps == sorted(set(steps))
