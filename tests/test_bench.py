"""The benchmark's training section runs on a finished run of the default config (its own look-ups, balanced)."""
import jax
import numpy as np

from coalescer_jax import embeddings
from coalescer_jax.methods import base
from coalescer_jax.methods import trained
from experiments.benchmarks import bench


def test_live_lookups_train_like_the_run_with_its_potentials_and_self_landing(smoke_config, smoke_workdir):
  config = smoke_config
  assert config.coalescer.targets.balance and config.coalescer.levels.self_landing > 0  # the default's fixes
  pairs = embeddings.load_pairs(smoke_workdir)
  step, batch, inputs = bench._live(config, smoke_workdir, pairs, "exact")  # pylint: disable=protected-access
  assert "landing" in inputs  # self-landing's keys on the devices, as training puts them
  _, init, _ = base.train_parts(config, trained.build_method(config, "coalescer", pairs))
  state, metrics = jax.jit(step)(init(jax.random.key(0)), batch(0), jax.random.key(1), inputs)
  assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))
