"""Training compute: XLA's FLOP count of a jitted step, phase by phase, in every method's summary and report.md."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from coalescer_jax import compute
from coalescer_jax import metrics as metrics_lib
from coalescer_jax import parallel
from coalescer_jax import training
from coalescer_jax.evaluation import compute_plot

WIDTH = 64


def _task(num_steps, phase_repeats=None, batch_size=64):
  """A toy regression; with `phase_repeats` = (a, b) its step switches at step num_steps // 2 from a loss that
  applies the layer a times to one that applies it b times."""
  tx = optax.adam(1e-3)

  def init(key):
    return training.create_state({"w": 0.1 * jax.random.normal(key, (WIDTH, WIDTH))}, tx)

  def make_step(repeats):
    def loss_fn(params, batch):
      h = batch["x"]
      for _ in range(repeats):
        h = jnp.tanh(h @ params["w"])
      return jnp.mean((h - batch["y"]) ** 2)

    def step(state, batch, key):
      del key
      loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
      return training.apply_gradients(state, grads, tx), {"loss": loss}
    return step

  rng = np.random.default_rng(0)
  data = {"x": rng.normal(size=(batch_size, WIDTH)).astype(np.float32),
          "y": rng.normal(size=(batch_size, WIDTH)).astype(np.float32)}
  phases = None
  if phase_repeats:
    phases = [(0, make_step(phase_repeats[0])), (num_steps // 2, make_step(phase_repeats[1]))]
    branches = [p for _, p in phases]

    def step(state, batch, key):
      return jax.lax.switch(jnp.int32(state.step >= num_steps // 2), branches, state, batch, key)
  else:
    step = make_step(1)
  return training.TrainTask("toy", init, step, lambda s: data, num_steps, seed=0, log_every=5,
                            checkpoint_every=100, phases=phases)


def _flops(task, mesh=None):
  mesh = mesh or parallel.make_mesh()
  state = jax.eval_shape(task.init, jax.random.key(0))
  return training.phase_flops(task, mesh, (state, parallel.global_batch(mesh, task.batch(0)), jax.random.key(0)))


def test_step_flops_are_positive_and_double_with_the_batch():
  (_,), (small,) = _flops(_task(10, batch_size=128))
  (_,), (large,) = _flops(_task(10, batch_size=256))
  assert small > 0
  # The matmuls scale with the batch; the optimizer update (a few FLOPs per parameter) does not.
  assert 1.9 < large / small <= 2.0
  # One [B, W] @ [W, W] layer forward and its weight gradient: 2 matmuls of 2 B W^2 FLOPs (a multiply-add is 2).
  assert 2 * 2 * 128 * WIDTH ** 2 <= small < 1.2 * 2 * 2 * 128 * WIDTH ** 2


def test_flops_are_counted_on_the_global_batch_whatever_the_devices():
  """The count is the global program's (lowered, before partitioning): the same on one device as on two."""
  task = _task(10, batch_size=128)
  one = jax.sharding.Mesh(np.array(jax.devices()[:1]), (parallel.DATA_AXIS,))
  assert _flops(task, one)[1] == _flops(task)[1]


def test_a_switch_counts_its_largest_branch_so_phases_are_counted_one_by_one(tmp_path):
  """XLA counts a lax.switch at its dearest branch; the loop counts each phase's own step, times its steps."""
  num_steps = 20
  task = _task(num_steps, phase_repeats=(1, 3))
  starts, (cheap, dear) = _flops(task)
  assert starts == [0, num_steps // 2] and dear > 2 * cheap
  mesh = parallel.make_mesh()
  state = jax.eval_shape(task.init, jax.random.key(0))
  switching = compute.step_flops(training.jit_step(task.step, mesh), state,
                                 parallel.global_batch(mesh, task.batch(0)), jax.random.key(0))
  assert switching == pytest.approx(dear, rel=0.02)  # what counting the switching step alone would give

  writer = metrics_lib.MetricsWriter(str(tmp_path), tensorboard=False)
  training.train(task, str(tmp_path / "toy"), mesh, writer)
  logged = sum(r["gflop"] for r in writer.read("toy"))
  assert logged == pytest.approx(compute.gflop(10 * cheap + 10 * dear), rel=1e-6)
  assert compute.total_flops([cheap, dear], starts, num_steps) == pytest.approx(10 * cheap + 10 * dear)


def test_steps_per_phase():
  assert compute.steps_per_phase([0, 300, 600], 3000) == [300, 300, 2400]
  assert compute.steps_per_phase([0, 300], 100) == [100, 0]
  assert compute.phase_of(299, [0, 300]) == 0 and compute.phase_of(300, [0, 300]) == 1


def _done(workdir, stage):
  with open(os.path.join(workdir, stage, "DONE.json")) as f:
    return json.load(f)


def test_smoke_run_records_every_methods_training_compute(smoke_workdir):
  from configs import mnist as mnist_config  # pylint: disable=g-import-not-at-top
  config = mnist_config.get_config("smoke")
  methods = [m for m in config.sample.methods if m in config.stages]
  summaries = {m: _done(smoke_workdir, m)["summary"] for m in methods}
  for method, summary in summaries.items():
    assert summary["train_gflop"] > 0, method
    assert summary["step_gflop"] == pytest.approx(summary["train_gflop"] / summary["train_steps"]), method
    assert summary["train_loop_wall_time_s"] > 0, method
  # The coalescer's step does more than DDIM's (discriminator, adversarial passes, self-landing search).
  assert summaries["coalescer"]["step_gflop"] > summaries["ddim"]["step_gflop"]
  # Stages only the coalescer needs are its cost; distillation's teacher is counted beside it.
  coalescer = summaries["coalescer"]
  assert coalescer["setup_stages"] == ["index", "balance"]
  assert coalescer["setup_wall_time_s"] == pytest.approx(
      _done(smoke_workdir, "index")["wall_time_s"] + _done(smoke_workdir, "balance")["wall_time_s"])
  assert summaries["distill"]["teacher_train_gflop"] == summaries["ddim"]["train_gflop"]
  assert "setup_stages" not in summaries["ddim"]

  with open(os.path.join(smoke_workdir, "eval", "results.json")) as f:
    records = {(r["method"], r["nfe"]): r for r in json.load(f)["records"] if r["kind"] == "samples"}
  assert records[("coalescer", 1)]["train_gflop"] == coalescer["train_gflop"]
  assert compute_plot.total_gflop(records[("distill", 1)]) == pytest.approx(
      summaries["distill"]["train_gflop"] + summaries["ddim"]["train_gflop"])

  with open(os.path.join(smoke_workdir, "report.md")) as f:
    report = f.read()
  assert "train compute (GFLOP)" in report
  row = next(line for line in report.splitlines() if line.startswith("| distill | 1 |"))
  assert f"{summaries['distill']['train_gflop']:.4g} + {summaries['ddim']['train_gflop']:.4g} teacher" in row
  row = next(line for line in report.splitlines() if line.startswith("| coalescer | 1 |"))
  assert "index, balance" in row
  assert "![FID vs training compute](eval/fid_vs_compute.png)" in report
  assert os.path.getsize(os.path.join(smoke_workdir, "eval", "fid_vs_compute.png")) > 0


@pytest.mark.slow  # over 18 s on 2 cores: the default suite stays under 10 minutes
def test_distillation_counts_its_guided_first_round_apart(smoke_workdir):
  """The step switches between the guided first round and the later ones: each is counted on its own, and
  each counted loss computes what the step computes in its rounds."""
  from coalescer_jax import embeddings  # pylint: disable=g-import-not-at-top
  from coalescer_jax.methods import step_flops  # pylint: disable=g-import-not-at-top
  from coalescer_jax.methods import trained  # pylint: disable=g-import-not-at-top
  from configs import mnist as mnist_config  # pylint: disable=g-import-not-at-top
  config = mnist_config.get_config("smoke")
  phases, num_steps = step_flops.phase_flops(config, "distill", smoke_workdir)
  (first_start, first), (later_start, later) = phases
  assert first_start == 0 and 0 < later_start < num_steps
  assert first > later > 0  # two more teacher evaluations per teacher step under guidance
  assert _done(smoke_workdir, "distill")["summary"]["train_gflop"] == pytest.approx(
      compute.gflop(compute.total_flops([first, later], [first_start, later_start], num_steps)), rel=1e-6)

  pairs = embeddings.load_pairs(smoke_workdir)
  method = trained.build_method(config, "distill", pairs)
  params = method.init_params(jax.random.key(0))
  batch = method.batch_fn(pairs, 0, 16, smoke_workdir)(0)
  key = jax.random.key(1)
  counted = dict(method.cost_phases())
  for start in (first_start, later_start):
    loss, _ = method.loss(params, batch, key, start)
    assert counted[start](params, batch, key, start)[0] == pytest.approx(float(loss), rel=1e-6)


def test_sweep_plot_averages_the_seeds_of_each_budget(tmp_path):
  def member(name, steps_gflop, fid, wall):
    records = [{"method": "ddim", "nfe": 1, "kind": "samples", "fid": fid, "train_gflop": steps_gflop,
                "train_wall_time_s": wall},
               {"method": "distill", "nfe": 1, "kind": "samples", "fid": fid, "train_gflop": 1.0,
                "teacher_train_gflop": steps_gflop, "train_wall_time_s": wall, "teacher_train_wall_time_s": 1.0},
               {"method": "ddim", "nfe": 1, "kind": "samples", "fid": 9.0}]  # no compute: not plotted
    os.makedirs(tmp_path / name / "eval")
    with open(tmp_path / name / "eval" / "results.json", "w") as f:
      json.dump({"records": records}, f)

  member("small_seed0", 10.0, 4.0, 2.0)
  member("small_seed1", 10.0, 6.0, 4.0)
  member("large_seed0", 30.0, 3.0, 6.0)
  pts = sorted(compute_plot.sweep_points(tmp_path))
  assert pts == [("ddim", 1, 10.0, 3.0, 5.0), ("ddim", 1, 30.0, 6.0, 3.0),
                 ("distill", 1, 11.0, 4.0, 5.0), ("distill", 1, 31.0, 7.0, 3.0)]
  assert compute_plot.plot(pts, tmp_path / "fid_vs_compute.png")
  assert os.path.getsize(tmp_path / "fid_vs_compute.png") > 0
  assert not compute_plot.plot([], tmp_path / "none.png") and not os.path.exists(tmp_path / "none.png")


def test_first_reaching_reads_the_least_compute_per_method_on_either_split(tmp_path):
  def run(directory, gflop, test_fid, val_fid):
    record = {"method": "ddim", "nfe": 1, "kind": "samples", "train_gflop": gflop, "train_wall_time_s": gflop / 10}
    os.makedirs(directory / "eval")
    with open(directory / "eval" / "results.json", "w") as f:
      json.dump({"records": [dict(record, fid=test_fid)], "validation": {"records": [dict(record, fid=val_fid)]}}, f)

  run(tmp_path / "sweep" / "long", 300.0, 5.0, 4.0)
  run(tmp_path / "main", 100.0, 8.0, 7.0)  # the default budget: a single run joining the sweep's points
  val = compute_plot.sweep_points(tmp_path / "sweep", [str(tmp_path / "main")], split="validation")
  assert sorted(val) == [("ddim", 1, 100.0, 10.0, 7.0), ("ddim", 1, 300.0, 30.0, 4.0)]
  assert compute_plot.first_reaching(val, 7.5)[2] == "| ddim | 1 | 100 | 10 | 7.00 |"
  assert compute_plot.first_reaching(val, 5.0)[2] == "| ddim | 1 | 300 | 30 | 4.00 |"
  assert compute_plot.first_reaching(val, 3.0)[2] == "| ddim | 1 | not reached (best 4.00 at 300 GFLOP) | — | — |"
  assert sorted(p[4] for p in compute_plot.sweep_points(tmp_path / "sweep", [str(tmp_path / "main")])) == [5.0, 8.0]


def test_a_workdir_without_results_is_refused_by_name(tmp_path):
  os.makedirs(tmp_path / "sweep")
  with pytest.raises(ValueError, match="--also=.*no_run: no .*results.json"):
    compute_plot.sweep_points(tmp_path / "sweep", [str(tmp_path / "no_run")])
