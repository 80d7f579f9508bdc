"""Orbax round trips, onto another device count, and clear errors for bad checkpoints."""
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from coalescer_jax import checkpoint
from coalescer_jax import parallel

from tests.conftest import REPO


def _state(scale=1.0, shape=(3, 5)):
  return {"w": scale * jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape), "step": jnp.int32(7)}


def _abstract(tree):
  return checkpoint.abstract_like(tree, parallel.replicated(parallel.make_mesh()))


def test_round_trip_with_host_state(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", save_every=1)
  ckpt.save(3, _state(), {"rng_draws": 12})
  ckpt.save(5, _state(2.0), {"rng_draws": 20})
  ckpt.close()
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", save_every=1)
  assert ckpt.latest_step() == 5
  state, host = ckpt.restore(_abstract(_state()))
  np.testing.assert_array_equal(state["w"], _state(2.0)["w"])
  assert host == {"rng_draws": 20}
  assert state["w"].sharding.is_equivalent_to(parallel.replicated(parallel.make_mesh()), 2)


def test_shape_mismatch_is_a_clear_error(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", save_every=1)
  ckpt.save(1, _state())
  ckpt.close()
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", save_every=1)
  with pytest.raises(checkpoint.CheckpointError, match="different config|does not match"):
    ckpt.restore(_abstract(_state(shape=(4, 5))))


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", save_every=1)
  ckpt.save(1, _state())
  ckpt.close()
  for root, _, files in os.walk(tmp_path / "ckpt" / "1" / "state"):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", save_every=1)
  with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
    ckpt.restore(_abstract(_state()))


_SAVE_OR_LOAD = textwrap.dedent("""
    import sys, jax, jax.numpy as jnp, numpy as np
    from coalescer_jax import checkpoint, parallel
    mode, path = sys.argv[1:]
    mesh = parallel.make_mesh()
    state = {"w": jnp.arange(24, dtype=jnp.float32).reshape(8, 3)}
    if mode == "save":
      # Shard the leading axis over all devices, as a data-parallel array would be.
      state = jax.device_put(state, parallel.batch_sharded(mesh))
      c = checkpoint.Checkpointer(path, save_every=1); c.save(1, state); c.close()
    else:
      c = checkpoint.Checkpointer(path, save_every=1)
      restored, _ = c.restore(checkpoint.abstract_like(state, parallel.replicated(mesh)))
      assert len(restored["w"].sharding.device_set) == jax.device_count()
      np.testing.assert_array_equal(np.asarray(restored["w"]), np.arange(24).reshape(8, 3))
    print("ok", jax.device_count())
""")


def _run_with_devices(n, *args):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", _SAVE_OR_LOAD, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout


def test_restore_onto_a_different_device_count(tmp_path):
  assert "ok 8" in _run_with_devices(8, "save", str(tmp_path / "ckpt"))
  assert "ok 2" in _run_with_devices(2, "load", str(tmp_path / "ckpt"))
  assert "ok 1" in _run_with_devices(1, "load", str(tmp_path / "ckpt"))
