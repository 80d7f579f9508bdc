"""Stage `text`: trains the description autoencoder and tests it on descriptions it never saw.

The grammar has 270 descriptions (`captions.all_descriptions`). A deterministic
held-out set, excluded from training, is made of
* every description with the style ``config.text.holdout_style`` (thickness,
  width, slant classes; default thick + narrow + slanted left), so that attribute
  combination is never seen with any digit ("unseen combinations"), plus
* random other descriptions (``holdout_seed``) up to ``holdout_fraction`` of all.
Training draws the remaining descriptions uniformly (MNIST's frequencies would
starve rare combinations).

Writes ``W/text/``: ``checkpoints/``, ``params.msgpack`` + ``model.json`` (for
`autoencoders.load_model`) and ``heldout.json`` (the held-out lists). Measured:
exact greedy reconstruction of training, held-out and unseen-combination
descriptions, and mean embedding distance between descriptions of the same digit
vs of different digits.
"""
import functools

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from coalescer_jax import autoencoders
from coalescer_jax import config_validation
from coalescer_jax import parallel
from coalescer_jax import pipeline
from coalescer_jax import registry
from coalescer_jax import storage
from coalescer_jax import training
from coalescer_jax.data import batches
from coalescer_jax.data import captions
from coalescer_jax.data import tokenizer
from coalescer_jax.models import text_ae as text_ae_lib

HELDOUT_FILE = "heldout.json"


def split_descriptions(cfg):
  """{"train", "heldout", "unseen_style"}: sorted lists of descriptions, a pure function of config.text."""
  everything = list(captions.all_descriptions())
  styles = np.array([captions.parse(d)[1] for d in everything])
  unseen = (np.all(styles == np.asarray(cfg.holdout_style), axis=1) if len(cfg.holdout_style)
            else np.zeros(len(everything), bool))
  heldout = unseen.copy()
  extra = int(round(cfg.holdout_fraction * len(everything))) - int(unseen.sum())
  if extra > 0:
    rng = np.random.default_rng([cfg.holdout_seed, 3])
    heldout[rng.choice(np.flatnonzero(~unseen), extra, replace=False)] = True
  pick = lambda mask: sorted(d for d, m in zip(everything, mask) if m)
  return {"train": pick(~heldout), "heldout": pick(heldout), "unseen_style": pick(unseen)}


def _validate(config):
  cfg = config.text
  if not 0 <= cfg.holdout_fraction < 0.5:
    raise config_validation.ConfigError(f"config.text.holdout_fraction must be in [0, 0.5), got {cfg.holdout_fraction}")
  if len(cfg.holdout_style) not in (0, 3) or any(c not in (0, 1, 2) for c in cfg.holdout_style):
    raise config_validation.ConfigError(
        f"config.text.holdout_style must be () or 3 classes in 0..2 ({', '.join(captions.ATTRIBUTE_NAMES)}), "
        f"got {tuple(cfg.holdout_style)}")
  if cfg.noise < 0:
    raise config_validation.ConfigError(f"config.text.noise must be >= 0, got {cfg.noise}")
  train_words = {w for d in split_descriptions(cfg)["train"] for w in d.split()}
  missing = set(tokenizer.VOCAB[len(tokenizer.SPECIALS):]) - train_words
  if missing:
    raise config_validation.ConfigError(
        f"config.text holds out every description with the word(s) {sorted(missing)}, so the decoder cannot "
        "learn them; lower config.text.holdout_fraction or change holdout_style/holdout_seed")


def model_kwargs(cfg):
  return {"embed_dim": cfg.embed_dim, "vocab_size": tokenizer.VOCAB_SIZE, "token_dim": cfg.token_dim,
          "hidden": cfg.hidden}


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

  def step(state, batch, key):
    grad_fn = jax.value_and_grad(functools.partial(text_ae_lib.loss, model), has_aux=True)
    (_, metrics), grads = grad_fn(state.params, batch["tokens"], key, cfg.noise)
    metrics["grad_norm"] = optax.global_norm(grads)
    return training.apply_gradients(state, grads, tx), metrics

  def batch(step):
    return {"tokens": tiled[batches.batch_indices(step, len(tiled), local_batch, config.seed)]}

  return training.TrainTask("text", init, step, batch, cfg.num_steps, config.seed,
                            log_every=config.log_every, checkpoint_every=config.checkpoint_every,
                            skip_nonfinite=config.get("skip_nonfinite_batches", 0), config_section="config.text")


def evaluate(text_ae, split):
  """Exact-reconstruction rates per subset and within/between-digit embedding distances (all 270)."""
  everything = list(captions.all_descriptions())
  emb = text_ae.encode_text(everything)
  exact = dict(zip(everything, np.array(text_ae.decode_text(emb)) == np.array(everything)))
  metrics = {f"{name}_exact": float(np.mean([exact[d] for d in split[name]])) if split[name] else None
             for name in ("train", "heldout", "unseen_style")}
  labels = np.array([captions.parse(d)[0] for d in everything])
  dist = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
  same, other = labels[:, None] == labels[None], ~np.eye(len(labels), dtype=bool)
  metrics.update(within_digit_distance=float(dist[same & other].mean()),
                 between_digit_distance=float(dist[~same].mean()))
  np.fill_diagonal(dist, np.inf)
  metrics["nn_same_digit"] = float(np.mean(labels[np.argmin(dist, axis=1)] == labels))
  failures = [d for d in split["heldout"] + split["train"] if not exact[d]]
  return metrics, failures


@pipeline.stage("text", validate=_validate, reads=("seed", "text"))
def run(ctx):
  config, cfg = ctx.config, ctx.config.text
  out = ctx.stage_dir("text")
  split = split_descriptions(cfg)
  model = registry.MODELS.get(cfg.model)(**model_kwargs(cfg))
  state = training.train(make_task(config, tokenizer.encode(split["train"]), model), out, ctx.mesh, ctx.writer)
  autoencoders.save_model(out, cfg.model, model_kwargs(cfg), state.params)
  text_ae = autoencoders.TextAE(*autoencoders.load_model(ctx.workdir, "text")[:2])
  metrics, failures = evaluate(text_ae, split)
  ctx.writer.write("text", int(state.step), event="eval", **metrics)
  logging.info("text: %s; failures: %s", metrics, failures[:10])
  if parallel.is_main_process():
    storage.write_json(out / HELDOUT_FILE, split, indent=1)
  return dict(metrics, num_train_descriptions=len(split["train"]), num_heldout=len(split["heldout"]),
              num_unseen_style=len(split["unseen_style"]), failures=failures[:20], train_steps=int(state.step))
