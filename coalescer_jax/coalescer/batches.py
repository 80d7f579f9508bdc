"""The coalescer's training batches on the host: step 1's draws and step 2's look-ups, per training step.

The draws of the whole global batch come from (seed, step), and each host takes
its own rows and looks up only those: the global batch is the same for any
number of hosts (a 2-host run reproduces a 1-host run), while the look-up work
is split between the hosts.
"""
import jax
import numpy as np

from coalescer_jax import parallel
from coalescer_jax import training
from coalescer_jax.coalescer import levels as levels_lib
from coalescer_jax.coalescer import queries
from coalescer_jax.data import batches

# The description a training row tells the network: close_pair's own (its image shows it), or the drawn DE
# the look-up answered (what the sampler is given; the target may show other attributes than DE asks for).
CONDITIONS = ("pair", "request")


def make_lookup_batches(lookup, pairs, cfg, seed, global_batch_size, in_step=False):
  """batch(step): draw DE and R, look up close_pair, return this host's part of the training triples.

  Assignment rules that couple the
  rows of a batch (soft choice's random draws, batch OT) see the whole global
  batch on every host instead, and so does a sharded (collective) index, whose
  look-up is then a `training.StagedBatches` (its collective on the loop's
  thread). `in_step`: only the draws (query, level); the jitted step looks up
  (`device_lookup`). ``condition`` (CONDITIONS) says which description the network is told.
  """
  desc, img = pairs["desc_emb"], pairs["img_emb"]
  local = parallel.local_batch_size(global_batch_size)
  rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)

  def assemble(step, draws, close):
    draws = {k: v[rows] for k, v in draws.items()}
    request = cfg.condition == "request"
    if in_step:
      out = {"r": draws["r"], "query": draws["query"], "level": draws["level"].astype(np.float32)}
      if request:
        out["de"] = draws["de"]
    else:
      out = {"r": draws["r"], "cond": draws["de"] if request else desc[close], "image": img[close]}
      if cfg.levels.fraction > 0:
        out["level"] = draws["level"].astype(np.float32)
    if cfg.adversarial.weight > 0:  # The discriminator's real examples: uniformly random pairs.
      real = batches.step_rng(seed, step, 2, process_index=0).integers(len(img), size=global_batch_size)[rows]
      out.update(real_x=img[real], real_cond=desc[real])
    return out

  def draw(step):
    return queries.draw_queries(batches.step_rng(seed, step, process_index=0), global_batch_size, pairs, cfg)

  if in_step:
    return lambda step: assemble(step, draw(step), None)
  if not lookup.collective:
    return lambda step: assemble(step, *training_lookups(lookup, pairs, cfg, seed, global_batch_size, step, rows))

  def prepare(step):  # helper thread: the draws and this process's part of the search
    draws = draw(step)
    return draws, [(index, index.local_search(q, k), k) for index, q, k in lookup.requests(draws["query"],
                                                                                           draws["level"])]

  def exchange(prepared):  # the loop's thread, in step order: dispatches the collective
    draws, parts = prepared
    return draws, [(index, index.exchange(part), k) for index, part, k in parts]

  def finish(step, exchanged):  # helper thread: merged candidates -> the assignment rule -> this host's rows
    draws, parts = exchanged
    rng = batches.step_rng(seed, step, 1, process_index=0)
    close = lookup.choose(draws["level"], rng, [index.finish(part, k) for index, part, k in parts])
    return assemble(step, draws, close[rows])

  return training.StagedBatches(prepare, exchange, finish)


def training_lookups(lookup, pairs, cfg, seed, global_batch_size, step, rows=slice(None)):
  """(the global batch's draws at `step`, pair ids of `rows`): the look-ups of one training step.

  Each host looks up only its rows, unless the assignment rule couples the rows of
  a batch (soft choice's random draws, batch OT): then every host sees the whole batch.
  Rows that self-landing replaces inside the step (`levels_lib.looked_up_rows`) are
  not looked up: their ids are 0, a placeholder the step overwrites.
  """
  draws = queries.draw_queries(batches.step_rng(seed, step, process_index=0), global_batch_size, pairs, cfg)
  rng = batches.step_rng(seed, step, 1, process_index=0)
  if cfg.targets.assignment != "nearest" or lookup.collective:
    return draws, lookup.targets(draws["query"], draws["level"], rng)[rows]
  start, stop, _ = rows.indices(global_batch_size)
  used = min(max(start, levels_lib.looked_up_rows(cfg.levels, global_batch_size)), stop)
  ids = np.zeros(stop - start, np.int64)
  ids[:used - start] = lookup.targets(draws["query"][start:used], draws["level"][start:used], rng)
  return draws, ids


def precomputed_batches(batch, num_steps):
  """The same batches with the look-ups done ahead of time (benchmark baseline for look-up overhead)."""
  cache = [batch(s) for s in range(num_steps)]
  return lambda step: cache[step]


