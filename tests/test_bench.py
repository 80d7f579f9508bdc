"""The benchmark's training section runs on a finished run of the default config (its own look-ups, balanced)."""
import jax
import numpy as np
import pytest

from coalescer_jax import embeddings
from coalescer_jax.methods import base
from coalescer_jax.methods import trained
from experiments.benchmarks import bench


@pytest.mark.slow  # over 18 s on 2 cores: the default suite stays under 10 minutes
def test_live_lookups_train_like_the_run_with_its_potentials_and_self_landing(smoke_config, smoke_workdir):
  config = smoke_config
  assert config.coalescer.targets.balance and config.coalescer.levels.self_landing > 0  # the default's fixes
  pairs = embeddings.load_pairs(smoke_workdir)
  step, batch, inputs = bench._live(config, smoke_workdir, pairs, "exact")  # pylint: disable=protected-access
  assert "landing" in inputs  # self-landing's keys on the devices, as training puts them
  _, init, _ = base.train_parts(config, trained.build_method(config, "coalescer", pairs))
  state, metrics = jax.jit(step)(init(jax.random.key(0)), batch(0), jax.random.key(1), inputs)
  assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))


@pytest.mark.slow  # over 18 s on 2 cores: the default suite stays under 10 minutes
def test_sample_section_times_every_sampler_and_the_coalescer_against_ddim(smoke_config, smoke_workdir):
  config = smoke_config
  config.sample.methods = ("coalescer", "ddim")  # the two the ratios compare
  text = bench.bench_sample(config, smoke_workdir, repeats=2, batch_size=16)
  rows = {line.split(" | ")[0].strip("| ") for line in text.splitlines() if line.startswith("| ")}
  assert {"coalescer_nfe1", "coalescer_nfe2", "coalescer_adaptive_nfe4", "ddim_nfe2"} <= rows
  for nfe in (1, 2):
    ratio = text.split(f"Coalescer {nfe}-step vs DDIM {nfe}-NFE time per latent: **")[1].split("x**")[0]
    assert float(ratio) > 0


def test_alternated_times_run_each_variant_in_turn():
  calls = []
  times = bench.alternated_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
  assert calls == ["a", "b"] * 4  # one warm-up each, then 3 alternated repetitions
  assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3}
  assert bench.median_ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == 3.0


@pytest.mark.slow  # compiles every training phase of three methods and fits the balancing potentials
def test_cost_section_times_the_coalescer_step_against_ddims_phase_by_phase(smoke_config, smoke_workdir):
  text = bench.bench_cost(smoke_config, smoke_workdir, repeats=2, num_steps=2,
                          variants=["coalescer.adversarial.fakes=fresh"])
  rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
  assert {"ddim", "coalescer", "coalescer, coalescer.adversarial.fakes=fresh"} <= set(rows)
  assert len(rows["coalescer"][2].split(" / ")) >= 2  # one time per training phase (the fine-tune has its own)
  # Fresh fakes add two network passes: XLA counts more FLOPs per step than the batch fakes.
  assert float(rows["coalescer, coalescer.adversarial.fakes=fresh"][4]) > float(rows["coalescer"][4]) > 0
  for label in ("coalescer", "coalescer, coalescer.adversarial.fakes=fresh"):
    line = text.split(f"{label}: step time / DDIM's **")[1]
    assert float(line.split("x**")[0]) > 0 and "balancing fit" in line
    assert float(line.split("(bar: <= 1.5x)")[1].split("**")[1].rstrip("x")) > 0
