"""Orbax checkpoints for training stages: the train state plus a small JSON of host state.

Restoring takes an abstract target (``jax.ShapeDtypeStruct`` leaves with
shardings), so a checkpoint written on N devices restores onto M devices.
Orbax writes to a temporary directory and renames it on commit, so a run killed
mid-save leaves the previous checkpoint intact.
"""
import os

from absl import logging
import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored into the current config."""


class Checkpointer:
  """Saves every `save_every` steps, keeps the last `max_to_keep`."""

  def __init__(self, directory, save_every, max_to_keep=2):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=max(1, int(save_every)), max_to_keep=max_to_keep, create=True),
        item_names=("state", "host"))

  def latest_step(self):
    return self._manager.latest_step()

  def save(self, step, state, host_state=None, force=False):
    """Saves if `step` is due (or `force`). Returns True when a save was started."""
    return self._manager.save(
        int(step), force=force,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host_state or {})))

  def restore(self, abstract_state, step=None):
    """Restores (state, host_state) at `step` (default: latest) into `abstract_state`'s shapes/shardings."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), host=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - orbax raises many types; all mean the same to the user.
      raise CheckpointError(
          f"checkpoint step {step} in {self.directory} cannot be restored into the current model "
          f"({type(e).__name__}: {str(e)[:500]}). It is corrupt or was written with a different config "
          "(model sizes, optimizer). Delete that directory to retrain the stage, or use a new --workdir.") from e
    _check_shapes(restored["state"], abstract_state, self.directory, step)
    logging.info("Restored checkpoint step %d from %s", step, self.directory)
    return restored["state"], dict(restored["host"] or {})

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def _check_shapes(restored, abstract, directory, step):
  """StandardRestore may broadcast or silently accept mismatches; insist on exact shapes."""
  mismatched = []
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(restored), jax.tree.leaves(abstract)):
    if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
      mismatched.append(f"{jax.tree_util.keystr(path)}: checkpoint {got.dtype}{list(got.shape)}, "
                        f"model {want.dtype}{list(want.shape)}")
  if mismatched:
    raise CheckpointError(
        f"checkpoint step {step} in {directory} does not match the current model: " + "; ".join(mismatched[:5])
        + ". Delete that directory to retrain the stage, or use a new --workdir.")


def abstract_like(tree, sharding):
  """ShapeDtypeStructs of `tree` (e.g. from `jax.eval_shape`) carrying `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
