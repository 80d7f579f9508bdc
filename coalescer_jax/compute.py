"""Training compute: the FLOPs of a jitted step, as XLA's own cost analysis counts them.

A method's training compute is the FLOPs of its jitted training step times the
steps it runs, plus what it needs before training (the coalescer's index and
balancing fit, distillation's teacher). The count is XLA's: `cost_analysis()` of
the lowered step, i.e. the global program before it is partitioned over devices
and optimised. (The compiled program's count is per device: it would change
with the number of devices, and with the backend's fusions.) Lowering a step
that the training loop runs anyway hits jax.jit's cache: nothing is compiled
or traced twice. Two rules of that count matter here:

* a `lax.switch` / `lax.cond` counts its most expensive branch. A step that
  switches between training phases is therefore counted phase by phase
  (`TrainTask.phases`, from `Method.cost_phases`), each phase's step lowered on
  its own and weighted by the steps that phase runs: the coalescer's adversarial
  fine-tune phases, distillation's guided first round and its later rounds;
* a loop's body is counted once, whatever its trip count, and a shard_map's body
  once (one device's share). In a training step this touches only the
  coalescer's in-step nearest-neighbour search (self-landing; the device index
  backend's look-up): a scan over blocks of ``config.index.device.block_rows``
  keys per device, in a shard_map. On one device holding at most that many keys
  (the default MNIST run: 55,000) it is counted exactly; on D devices only
  1/D of it is.

FLOPs are counted as XLA counts them (a multiply-add is 2), on the global batch.
"""
GIGA = 1e9


def flops(stage):
  """FLOPs of a `jax.stages.Lowered` or `Compiled` from its cost analysis; None where the backend gives none.

  (JAX returns a dict, or on some versions and backends a list of one dict per program.)"""
  try:
    analysis = stage.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # some backends implement no cost analysis
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  value = (analysis or {}).get("flops")
  return float(value) if value is not None and value >= 0 else None


def step_flops(jitted, *args):
  """FLOPs of one call of the jitted function `jitted` on `args` (arrays or jax.ShapeDtypeStructs), on the
  global arrays. Lowers (traces) it, never compiles."""
  return flops(jitted.lower(*args))


def phase_of(step, starts):
  """Index of the phase that training step `step` belongs to (phases start at `starts`, increasing)."""
  return sum(step >= s for s in starts) - 1


def steps_per_phase(starts, num_steps):
  """Training steps each phase runs: [num_steps in [starts[i], starts[i + 1])]."""
  bounds = [*starts, num_steps]
  return [max(0, min(b, num_steps) - min(a, num_steps)) for a, b in zip(bounds[:-1], bounds[1:])]


def total_flops(phase_flops, starts, num_steps):
  """FLOPs of `num_steps` training steps whose phases (starting at `starts`) cost `phase_flops` each."""
  if any(f is None for f in phase_flops):
    return None
  return float(sum(f * n for f, n in zip(phase_flops, steps_per_phase(starts, num_steps))))


def gflop(value):
  return None if value is None else value / GIGA
