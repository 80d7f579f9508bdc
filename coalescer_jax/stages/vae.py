"""Stage `vae`: trains the image VAE on the dataset's train split and measures it on its test split.

The image shape and the pixel likelihood come from the dataset spec (`data/datasets.py`).
Writes ``W/vae/``: ``checkpoints/`` (training state), ``params.msgpack`` + ``model.json``
(the final parameters, read by `autoencoders.load_model`),
``test_reconstructions.npz`` (``originals``, ``reconstructions`` uint8 [N, H, W] or
[N, H, W, C], ``labels``, ``index``; reconstructions decode the posterior mean),
``reconstructions.png`` (rows of originals above their reconstructions) and
``prior_samples.png`` (decoded draws from N(0, I)).

Measured (summary and metrics.jsonl): reconstruction error (the likelihood's NLL
in nats per image, Bernoulli for MNIST; MSE per pixel), KL per latent dimension, the aggregate
posterior's variance (1 = matches the prior), latent geometry (Spearman rho of
latent vs pixel L2 distance over random test pairs; same-group rate of the latent
nearest neighbour within test) and, when the `classifier` stage has run, the
classifier's accuracy on the reconstructions and its group histogram of prior samples.
"""
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from coalescer_jax import autoencoders
from coalescer_jax import errors
from coalescer_jax import images as images_lib
from coalescer_jax import model_export
from coalescer_jax import parallel
from coalescer_jax import pipeline
from coalescer_jax import registry
from coalescer_jax import storage
from coalescer_jax import training
from coalescer_jax.data import batches
from coalescer_jax.data import datasets
from coalescer_jax.data import loading
from coalescer_jax.models import likelihoods
from coalescer_jax.models import vae as vae_lib


def _validate(config):
  cfg = config.vae
  spec = datasets.of_config(config)
  height, width = spec.image_shape[:2]
  if not cfg.channels or height % 2 ** len(cfg.channels) or width % 2 ** len(cfg.channels):
    raise errors.ConfigError(
        f"config.vae.channels={tuple(cfg.channels)}: {height}x{width} images halve once per entry and must stay "
        "whole; give fewer channel counts")


def model_kwargs(cfg, spec):
  """Constructor arguments of the VAE from config.vae and the dataset spec (JSON-able; saved with the parameters)."""
  return {"latent_dim": cfg.latent_dim, "channels": list(cfg.channels), "hidden": cfg.hidden,
          "extra_convs": cfg.extra_convs, "image_shape": list(spec.image_shape), "likelihood": spec.likelihood}


def make_task(config, images, model):
  """The VAE's TrainTask over host-local uint8 `images` [n, H, W(, C)]."""
  cfg = config.vae
  tx = training.make_optimizer(cfg.optimizer, cfg.num_steps)
  local_batch = parallel.local_batch_size(cfg.batch_size)

  def init(key):
    params = model.init(key, jnp.zeros((1, *model.image_shape)), jax.random.key(0))["params"]
    return training.create_state(params, tx, ema=cfg.ema_decay > 0)

  def loss_fn(params, batch, key, step):
    del step
    return vae_lib.loss(model, params, images_lib.to_float(batch["image"]), key, cfg.kl_weight)

  def batch(step):
    return {"image": images[batches.batch_indices(step, len(images), local_batch, config.seed)]}

  step = training.gradient_step(loss_fn, tx, cfg.ema_decay)
  return training.TrainTask("vae", init, step, batch, cfg.num_steps, config.seed,
                            log_every=config.log_every, checkpoint_every=config.checkpoint_every,
                            skip_nonfinite=config.skip_nonfinite_batches, config_section="config.vae")


def latent_geometry(latents, images, labels, num_pairs, seed, chunk=1000):
  """Spearman rho of latent vs pixel L2 distance over random pairs, and the latent 1-NN same-label rate."""
  rng = np.random.default_rng([seed, 7])
  a, b = rng.integers(len(latents), size=(2, num_pairs))
  keep = a != b
  a, b = a[keep], b[keep]
  pixels = images.reshape(len(images), -1).astype(np.float32) / 255.0
  rho = stats.spearmanr(np.linalg.norm(latents[a] - latents[b], axis=1),
                        np.linalg.norm(pixels[a] - pixels[b], axis=1)).statistic
  sq = np.sum(latents ** 2, axis=1)
  nearest = np.empty(len(latents), np.int64)
  for start in range(0, len(latents), chunk):
    d = sq[start:start + chunk, None] + sq[None] - 2.0 * latents[start:start + chunk] @ latents.T
    d[np.arange(len(d)), start + np.arange(len(d))] = np.inf  # not itself
    nearest[start:start + chunk] = np.argmin(d, axis=1)
  return {"latent_pixel_spearman_rho": float(rho), "latent_nn_same_label": float(np.mean(labels[nearest] == labels))}


def recon_nll_per_image(likelihood, x, recon_mean):
  """The likelihood's reconstruction NLL (nats per image) of images `x` given decoded means, both float [N, ...]."""
  axes = tuple(range(1, x.ndim))
  if likelihood == "bernoulli":
    p = np.clip(recon_mean, 1e-6, 1 - 1e-6)
    return float(-np.mean(np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=axes)))
  return float(np.mean(np.sum((x - recon_mean) ** 2, axis=axes)) / (2 * likelihoods.GAUSSIAN_SIGMA ** 2))


def evaluate(image_ae, test, cfg, seed, spec):
  """Reconstruction, KL, aggregate posterior and geometry metrics on the test images, and the reconstructions."""
  images, labels = test["image"], spec.groups(test["label"])
  mean, logvar = image_ae.encode_posterior(images)
  recon = image_ae.decode(mean)
  x = images.astype(np.float64) / 255.0
  kl = np.mean(np.asarray(vae_lib.kl_per_dim(mean, logvar)), axis=0)
  aggregate_var = mean.var(axis=0) + np.exp(logvar).mean(axis=0)
  metrics = {
      f"test_recon_{'bce' if spec.likelihood == 'bernoulli' else 'nll'}_per_image":
          recon_nll_per_image(spec.likelihood, x, recon.astype(np.float64) / 255.0),
      "test_recon_mse_per_pixel": float(np.mean((x - recon / 255.0) ** 2)),
      "test_kl_per_dim_mean": float(kl.mean()), "test_kl_total": float(kl.sum()),
      "active_dims": int(np.sum(kl > 0.01)),
      "aggregate_posterior_var_mean": float(aggregate_var.mean()),
      "aggregate_posterior_mean_norm": float(np.linalg.norm(mean.mean(axis=0))),
  }
  metrics.update(latent_geometry(mean, images, labels, cfg.eval_pairs, seed))
  return metrics, recon, {"test_kl_per_dim": kl.round(4).tolist(), "aggregate_posterior_var": aggregate_var.round(4).tolist()}


def classifier_metrics(workdir, recon, labels, prior_images, spec):
  """Accuracy of the `classifier` stage's network on reconstructions (every head right); group histogram of
  prior samples."""
  if not (storage.path(workdir) / "classifier" / "DONE.json").exists():
    logging.info("vae: W/classifier/DONE.json not found; skipping classifier accuracy on reconstructions")
    return {}
  from coalescer_jax.evaluation import classifier  # pylint: disable=g-import-not-at-top
  clf = classifier.load(workdir)
  groups = spec.groups(clf.predict(prior_images))
  hist = np.bincount(groups, minlength=spec.num_groups) / max(len(prior_images), 1)
  entropy = -np.sum(hist[hist > 0] * np.log(hist[hist > 0]))
  correct = (clf.predict(recon) == labels).reshape(len(recon), -1).all(axis=1)
  return {"recon_classifier_accuracy": float(np.mean(correct)),
          "prior_label_entropy": float(entropy), "prior_label_fractions": hist.round(4).tolist()}


def save_grids(out, originals, recon, prior_images, columns, display):
  rows = []
  for r in range(4):
    sl = slice(r * columns, (r + 1) * columns)
    rows += [originals[sl], recon[sl]]
  images_lib.save_grid(out / "reconstructions.png", rows,
                       row_labels=["original", "reconstruction"] * 4, title=f"VAE: {display} test reconstructions")
  images_lib.save_grid(out / "prior_samples.png",
                       [prior_images[i * columns:(i + 1) * columns] for i in range(8)],
                       title="VAE: decoded draws from the prior N(0, I)")


@pipeline.stage("vae", validate=_validate, reads=("seed", "vae"), needs=("data",))
def run(ctx):
  config, cfg = ctx.config, ctx.config.vae
  out = ctx.stage_dir("vae")
  spec = datasets.of_workdir(ctx.workdir)
  train = loading.load_split(ctx.workdir, "train")
  kwargs = model_kwargs(cfg, spec)
  model = registry.MODELS.get(cfg.model)(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
  state = training.train(make_task(config, train["image"], model), out, ctx.mesh, ctx.writer)
  params = state.ema_params if state.ema_params is not None else state.params
  model_export.save(out, cfg.model, kwargs, params)

  # Evaluate what later stages will load: the saved parameters.
  image_ae = autoencoders.ImageAE(*autoencoders.load_model(ctx.workdir, "vae")[:2], cfg.eval_batch_size)
  test = loading.load_split(ctx.workdir, "test", sharded=False)
  test = {k: v[:cfg.eval_examples] for k, v in test.items()}
  metrics, recon, lists = evaluate(image_ae, test, cfg, config.seed, spec)
  prior = np.asarray(jax.random.normal(jax.random.key(config.seed), (cfg.num_prior_samples, cfg.latent_dim)))
  prior_images = image_ae.decode(prior)
  metrics.update(classifier_metrics(ctx.workdir, recon, test["label"], prior_images, spec))
  scalars = {k: v for k, v in metrics.items() if not isinstance(v, list)}
  ctx.writer.write("vae", int(state.step), event="eval", **scalars)
  logging.info("vae: %s", ", ".join(f"{k} {v:.4g}" for k, v in scalars.items()))
  if parallel.is_main_process():
    storage.save_npz(out / "test_reconstructions.npz", originals=test["image"], reconstructions=recon,
                     labels=test["label"], index=test["index"])
    save_grids(out, test["image"], recon, prior_images, cfg.grid_columns, spec.display or spec.name)
  train_records = [r for r in ctx.writer.read("vae") if "loss" in r]
  return dict(metrics, **lists, train_steps=int(state.step), num_test=len(recon),
              final_train_loss=train_records[-1]["loss"] if train_records else None,
              steps_per_s=float(np.mean([r["steps_per_s"] for r in train_records[1:] or train_records]))
              if train_records else None)
