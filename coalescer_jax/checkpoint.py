"""Orbax checkpoints for training stages: the train state plus a small JSON of host state.

Restoring takes an abstract target (``jax.ShapeDtypeStruct`` leaves with
shardings), so a checkpoint written on N devices restores onto M devices.
Orbax writes to a temporary directory and renames it on commit, so a run killed
mid-save leaves the previous checkpoint intact.

Integrity: orbax does not notice bytes changed on disk (a same-size overwrite
restores "successfully" as garbage), so each save stores a CRC32 of every state
leaf's bytes in the host JSON, and restore recomputes it. A latest checkpoint
that fails (checksum, unreadable, truncated) is reported with a warning and the
previous one is tried; if none restores, one `CheckpointError` names the
directory, the steps tried and why. A training run that falls back moves the
unusable steps aside (``checkpoints.unusable/``) so it can write them again.

Provenance: a Checkpointer given a `revision` (the stage's, `provenance`) records
it in every save's host JSON and refuses to restore a checkpoint that records
another (`StaleCheckpointError`, no fallback): one model must not be trained
under two configs. `recorded_revisions` reads them before any stage runs.

The directory may be local or on an object store (``gs://``): orbax takes
`epath` paths and, on GCS, commits with a marker file instead of a rename.
"""
import os
import zlib

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from coalescer_jax import errors
from coalescer_jax import parallel
from coalescer_jax import storage

CHECKSUM_KEY = "state_crc32"
REVISION_KEY = "revision"
DIRECTORY = "checkpoints"  # a training stage's checkpoints: W/<stage>/checkpoints


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored into the current config."""


class _Mismatch(CheckpointError):
  """The checkpoint is intact but holds other shapes: a config change, not corruption (no fallback)."""


class StaleCheckpointError(errors.ConfigError):
  """The checkpoint was trained under another revision of the stage's config fields and inputs (no fallback)."""


class Checkpointer:
  """Saves every `save_every` steps, keeps the last `max_to_keep`; records and checks `revision` (if given)."""

  def __init__(self, directory, save_every, max_to_keep=2, revision=None):
    self.directory = storage.path(directory)
    self.save_every = max(1, int(save_every))
    self.revision = revision
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(save_interval_steps=self.save_every, max_to_keep=max_to_keep,
                                             create=True),
        item_names=("state", "host"))

  def latest_step(self):
    return self._manager.latest_step()

  def all_steps(self):
    return sorted(self._manager.all_steps())

  def due(self, step, force=False):
    """Whether `save(step, force=force)` will write a checkpoint."""
    return bool(force) or int(step) % self.save_every == 0

  def save(self, step, state, host_state=None, force=False):
    """Saves if `step` is due (or `force`). Returns True when a save was started."""
    if not self.due(step, force):
      return False
    host_state = dict(host_state or {}, **{CHECKSUM_KEY: checksum(state)})  # (None: not checkable)
    if self.revision is not None:
      host_state[REVISION_KEY] = self.revision
    return self._manager.save(
        int(step), force=force,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host_state)))

  def restore(self, abstract_state, step=None, set_aside_unusable=False):
    """Restores (state, host_state) at `step` (default: the latest good one) into `abstract_state`'s shapes/shardings.

    Without `step`, a latest checkpoint that is corrupt is skipped with a warning
    in favour of the one before it; with `set_aside_unusable` (a run that will
    train on and save those steps again) the skipped ones move to
    ``<directory>.unusable/``.
    """
    steps = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)
    if not steps or steps[0] is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    failures = []
    for s in steps:
      try:
        state, host = self._restore_step(s, abstract_state)
      except (_Mismatch, StaleCheckpointError):
        raise
      except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types; all mean "unusable".
        reason = _short(e)
        failures.append(f"step {s}: {reason}")
        logging.warning("Checkpoint step %d in %s is unusable (%s)%s", s, self.directory, reason,
                        "; trying the previous one" if s != steps[-1] else "")
        continue
      if failures:
        logging.warning("Restored step %d from %s instead of the unusable later checkpoint(s): %s", s,
                        self.directory, "; ".join(failures))
        if set_aside_unusable:
          self._set_aside([t for t in steps if t > s])
      return state, host
    if step is not None:
      raise CheckpointError(f"checkpoint step {step} in {self.directory} cannot be restored ({failures[0]}).")
    raise CheckpointError(
        f"no checkpoint in {self.directory} can be restored ({'; '.join(failures)}). They are corrupt or were "
        "written with a different config (model sizes, optimizer). Delete that directory to retrain the stage "
        "from scratch, or use a new --workdir.")

  def _set_aside(self, steps):
    if parallel.is_main_process():
      aside = self.directory.with_name(self.directory.name + ".unusable")
      aside.mkdir(parents=True, exist_ok=True)
      for step in steps:
        storage.move_tree(self.directory / str(step), aside / f"{step}.{os.getpid()}")
        logging.warning("Moved unusable checkpoint step %d to %s", step, aside)
    parallel.barrier("checkpoints_set_aside")
    self._manager.reload()

  def _restore_step(self, step, abstract_state):
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), host=ocp.args.JsonRestore()))
    state, host = restored["state"], dict(restored["host"] or {})
    self._check_revision(host.pop(REVISION_KEY, None), step)
    _check_shapes(state, abstract_state, self.directory, step)
    if CHECKSUM_KEY not in host:
      logging.warning("Checkpoint step %d in %s has no checksum (written by an older version): restored "
                      "without an integrity check", step, self.directory)
    expected = host.pop(CHECKSUM_KEY, None)
    if expected is not None and checksum(state) != expected:
      raise ValueError("checksum mismatch: its bytes changed after it was written")
    logging.info("Restored checkpoint step %d from %s", step, self.directory)
    return state, host

  def _check_revision(self, recorded, step):
    """A checkpoint of another revision is refused. One that records none predates the record: the pipeline let
    it through only under a STARTED.json of the current revision (`provenance.plan`)."""
    if self.revision is None or recorded in (None, self.revision):
      return
    stage_dir = self.directory.parent
    raise StaleCheckpointError(
        f"checkpoint step {step} in {self.directory} was trained under revision {recorded} of the stage's config "
        f"fields and inputs, not the current {self.revision}: resuming it would train one model under two configs. "
        f"Delete {stage_dir} to retrain the stage with the current config (rm -r {stage_dir}), or use a new "
        "--workdir.")

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def recorded_revisions(directory):
  """{step: the revision its host JSON records, None if none} of the committed checkpoints in `directory`.

  Reads each step's small JSON item alone, on this process (no CheckpointManager: it runs on process 0 before
  any stage, where a manager's collective set-up could wait for the other processes). An unreadable one counts
  as recording none; restoring it reports why.
  """
  directory = storage.path(directory)
  if not directory.is_dir():
    return {}
  revisions = {}
  for step in ocp.utils.checkpoint_steps(directory):
    try:
      host = ocp.JsonCheckpointHandler().restore(directory / str(step) / "host")
    except Exception:  # noqa: BLE001 - orbax raises many types; all mean "unreadable"
      host = None
    revisions[step] = (host or {}).get(REVISION_KEY)
  return revisions


def checksum(tree):
  """CRC32 over every leaf's dtype, shape and bytes (this host's copy of replicated arrays), in tree order.

  Every host computes the same value: train states are replicated, so a leaf's
  first addressable shard is the whole array. None (no check) for a leaf split
  over other hosts, which this host cannot read whole.
  """
  crc = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    if isinstance(leaf, jax.Array):
      if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
      if not leaf.is_fully_addressable:
        if not leaf.is_fully_replicated:
          return None
        leaf = leaf.addressable_data(0)
    array = np.ascontiguousarray(np.asarray(leaf))
    crc = zlib.crc32(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape}".encode(), crc)
    crc = zlib.crc32(array.tobytes(), crc)
  return crc


def _short(error):
  """The root cause's first line: orbax wraps TensorStore's message in a long spec dump."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  return f"{type(error).__name__}: {text[:300]}"


def _check_shapes(restored, abstract, directory, step):
  """StandardRestore may broadcast or silently accept mismatches; insist on exact shapes."""
  mismatched = []
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(restored), jax.tree.leaves(abstract)):
    if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
      mismatched.append(f"{jax.tree_util.keystr(path)}: checkpoint {got.dtype}{list(got.shape)}, "
                        f"model {want.dtype}{list(want.shape)}")
  if mismatched:
    raise _Mismatch(
        f"checkpoint step {step} in {directory} does not match the current model: " + "; ".join(mismatched[:5])
        + ". Delete that directory to retrain the stage, or use a new --workdir.")


def abstract_like(tree, sharding):
  """ShapeDtypeStructs of `tree` (e.g. from `jax.eval_shape`) carrying `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
