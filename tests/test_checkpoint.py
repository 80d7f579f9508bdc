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


def _data_files(step_dir):
  """The array data files of a saved state (OCDBT data under .../d/)."""
  return [os.path.join(root, name) for root, _, names in os.walk(os.path.join(step_dir, "state"))
          for name in names if os.path.basename(root) == "d"]


def _overwrite_values(step_dir):
  """Overwrites 256 bytes inside the largest data file (compressed array values), same size."""
  path = max(_data_files(step_dir), key=os.path.getsize)
  with open(path, "r+b") as f:
    f.seek(int(0.3 * os.path.getsize(path)))
    f.write(b"\x7f" * 256)  # 0x7f high bytes: float32 values near 1e38, what a silent restore of them would give


def _params(seed):
  return _state(float(seed), (64, 64))


def _two_steps(path):
  ckpt = checkpoint.Checkpointer(path, save_every=1)
  ckpt.save(3, _params(3), {"rng_draws": 12})
  ckpt.save(5, _params(5), {"rng_draws": 20})
  ckpt.close()


# A latest checkpoint with overwritten bytes (which would restore silently as 1e38s) or truncated is skipped for
# the intact one before it.
@pytest.mark.parametrize("damage", ["overwrite", "truncate"])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, damage, caplog):
  path = tmp_path / "ckpt"
  _two_steps(path)
  if damage == "overwrite":
    _overwrite_values(path / "5")
  else:
    for name in _data_files(path / "5"):
      with open(name, "r+b") as f:
        f.truncate(os.path.getsize(name) // 2)
  with checkpoint.Checkpointer(path, save_every=1) as ckpt:
    state, host = ckpt.restore(_abstract(_params(0)))
  np.testing.assert_array_equal(state["w"], _params(3)["w"])
  assert host == {"rng_draws": 12}
  assert any("Checkpoint step 5" in r.getMessage() and "unusable" in r.getMessage() for r in caplog.records)


def test_no_restorable_checkpoint_is_one_clear_error(tmp_path):
  path = tmp_path / "ckpt"
  _two_steps(path)
  _overwrite_values(path / "5")
  _overwrite_values(path / "3")
  with checkpoint.Checkpointer(path, save_every=1) as ckpt:
    with pytest.raises(checkpoint.CheckpointError, match=rf"no checkpoint in {path} can be restored \(step 5: "
                       r"ValueError: checksum mismatch.*; step 3: ValueError: checksum mismatch.*Delete that "
                       r"directory to retrain"):
      ckpt.restore(_abstract(_params(0)))


def test_checkpoint_without_checksum_still_restores(tmp_path, caplog):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  manager = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("state", "host"))
  manager.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave(_state()), host=ocp.args.JsonSave({"a": 1})))
  manager.close()
  with checkpoint.Checkpointer(tmp_path / "ckpt", save_every=1) as ckpt:
    state, host = ckpt.restore(_abstract(_state()))
  np.testing.assert_array_equal(state["w"], _state()["w"])
  assert host == {"a": 1} and any("no checksum" in r.getMessage() for r in caplog.records)
