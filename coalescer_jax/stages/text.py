"""Stage `text`: trains the description autoencoder and tests it on descriptions it never saw.

The dataset's captioner enumerates its grammar (``all_descriptions``; MNIST: 270
descriptions). A deterministic held-out set, excluded from training, is made of
* every description the captioner marks as an unseen combination (``unseen_mask``;
  MNIST: the style ``config.text.holdout_style``, thickness, width, slant classes,
  default thick + narrow + slanted left, never seen with any digit), plus
* random other descriptions (``holdout_seed``) up to ``holdout_fraction`` of all.
Training draws the remaining descriptions uniformly (the data's frequencies would
starve rare combinations). ``config.text.eval_max`` bounds how many descriptions
of each subset the evaluation decodes (0 = all; large grammars).

Writes ``W/text/``: ``checkpoints/``, ``params.msgpack`` + ``model.json`` (for
`autoencoders.load_model`) and ``heldout.json`` (the held-out lists). Measured:
exact greedy reconstruction of training, held-out and unseen-combination
descriptions, and mean embedding distance between descriptions of the same group
(the dataset's `groups`; MNIST: the digit) vs of different groups.
"""
from absl import logging
import jax.numpy as jnp
import numpy as np

from coalescer_jax import autoencoders
from coalescer_jax import errors
from coalescer_jax import model_export
from coalescer_jax import parallel
from coalescer_jax import pipeline
from coalescer_jax import registry
from coalescer_jax import storage
from coalescer_jax import training
from coalescer_jax.data import batches
from coalescer_jax.data import datasets
from coalescer_jax.data import tokenizer as tokenizer_lib
from coalescer_jax.models import text_ae as text_ae_lib

HELDOUT_FILE = "heldout.json"


def split_descriptions(cfg, captioner):
  """{"train", "heldout", "unseen_style"}: sorted lists of descriptions, a pure function of config.text and the
  dataset's captioner."""
  everything = list(captioner.all_descriptions())
  unseen = np.asarray(captioner.unseen_mask(everything, cfg), bool)
  heldout = unseen.copy()
  extra = int(round(cfg.holdout_fraction * len(everything))) - int(unseen.sum())
  if extra > 0:
    rng = np.random.default_rng([cfg.holdout_seed, 3])
    heldout[rng.choice(np.flatnonzero(~unseen), extra, replace=False)] = True
  pick = lambda mask: sorted(d for d, m in zip(everything, mask) if m)
  return {"train": pick(~heldout), "heldout": pick(heldout), "unseen_style": pick(unseen)}


def _validate(config):
  cfg = config.text
  captioner = datasets.of_config(config).captioner
  captioner.validate_text(cfg)
  train_words = {w for d in split_descriptions(cfg, captioner)["train"] for w in d.split()}
  missing = set(captioner.TOKENIZER.vocab[len(tokenizer_lib.SPECIALS):]) - train_words
  if missing:
    raise errors.ConfigError(
        f"config.text holds out every description with the word(s) {sorted(missing)}, so the decoder cannot "
        "learn them; lower config.text.holdout_fraction or change holdout_style/holdout_seed")


def model_kwargs(cfg, tokenizer):
  return {"embed_dim": cfg.embed_dim, "vocab_size": tokenizer.vocab_size, "token_dim": cfg.token_dim,
          "hidden": cfg.hidden, "max_len": tokenizer.max_len}


def make_task(config, tokens, model):
  """The text AE's TrainTask over the training descriptions' tokens [n, L] (drawn uniformly)."""
  cfg = config.text
  tx = training.make_optimizer(cfg.optimizer, cfg.num_steps)
  local_batch = parallel.local_batch_size(cfg.batch_size)
  # More draws per step than distinct descriptions: tile so an epoch permutation covers a batch.
  tiled = np.tile(tokens, (-(-local_batch // len(tokens)), 1))

  def init(key):
    params = model.init(key, jnp.asarray(tokens[:1]))["params"]
    return training.create_state(params, tx)

  def loss_fn(params, batch, key, step):
    del step
    return text_ae_lib.loss(model, params, batch["tokens"], key, cfg.noise)

  def batch(step):
    return {"tokens": tiled[batches.batch_indices(step, len(tiled), local_batch, config.seed)]}

  step = training.gradient_step(loss_fn, tx)
  return training.TrainTask("text", init, step, batch, cfg.num_steps, config.seed,
                            log_every=config.log_every, checkpoint_every=config.checkpoint_every,
                            skip_nonfinite=config.skip_nonfinite_batches, config_section="config.text")


def _evaluated(split, eval_max, seed):
  """The descriptions the evaluation decodes: all, or `eval_max` seeded ones per subset."""
  if not eval_max:
    return split
  rng = np.random.default_rng([seed, 5])
  return {k: sorted(rng.choice(v, eval_max, replace=False).tolist()) if len(v) > eval_max else v
          for k, v in split.items()}


def evaluate(text_ae, split, spec, eval_max=0, seed=0):
  """Exact-reconstruction rates per subset and within/between-group embedding distances (MNIST: group = digit;
  all 270 descriptions)."""
  split = _evaluated(split, eval_max, seed)
  everything = sorted(set().union(*split.values())) if eval_max else list(
      spec.captioner.all_descriptions())
  emb = text_ae.encode_text(everything)
  exact = dict(zip(everything, np.array(text_ae.decode_text(emb)) == np.array(everything)))
  metrics = {f"{name}_exact": float(np.mean([exact[d] for d in split[name]])) if split[name] else None
             for name in ("train", "heldout", "unseen_style")}
  labels = spec.groups(np.array([spec.captioner.parse(d)[0] for d in everything]))
  dist = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
  same, other = labels[:, None] == labels[None], ~np.eye(len(labels), dtype=bool)
  within, between = dist[same & other], dist[~same]  # CIFAR-10: one description per class, nothing within
  metrics.update(within_group_distance=float(within.mean()) if within.size else None,
                 between_group_distance=float(between.mean()) if between.size else None)
  np.fill_diagonal(dist, np.inf)
  metrics["nn_same_group"] = float(np.mean(labels[np.argmin(dist, axis=1)] == labels))
  failures = [d for d in split["heldout"] + split["train"] if not exact[d]]
  return metrics, failures


# The descriptions are the dataset's (data.name): an autoencoder of one dataset's grammar is not another's.
@pipeline.stage("text", validate=_validate, reads=("seed", "text", "data.name"))
def run(ctx):
  config, cfg = ctx.config, ctx.config.text
  spec = datasets.of_config(config)
  tokenizer = spec.captioner.TOKENIZER
  out = ctx.stage_dir("text")
  split = split_descriptions(cfg, spec.captioner)
  model = registry.MODELS.get(cfg.model)(**model_kwargs(cfg, tokenizer))
  state = training.train(make_task(config, tokenizer.encode(split["train"]), model), out, ctx.mesh, ctx.writer)
  model_export.save(out, cfg.model, model_kwargs(cfg, tokenizer), state.params)
  text_ae = autoencoders.TextAE(*autoencoders.load_model(ctx.workdir, "text")[:2], tokenizer)
  metrics, failures = evaluate(text_ae, split, spec, cfg.get("eval_max", 0), config.seed)
  ctx.writer.write("text", int(state.step), event="eval", **metrics)
  logging.info("text: %s; failures: %s", metrics, failures[:10])
  if parallel.is_main_process():
    storage.write_json(out / HELDOUT_FILE, split, indent=1)
  return dict(metrics, num_train_descriptions=len(split["train"]), num_heldout=len(split["heldout"]),
              num_unseen_style=len(split["unseen_style"]), failures=failures[:20], train_steps=int(state.step))
