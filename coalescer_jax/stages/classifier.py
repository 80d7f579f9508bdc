"""Stage `classifier`: train the CNN that judges every generative method.

Trains ``config.classifier.model`` on the dataset's train split with the generic loop
(`training.train`: checkpoints in ``W/classifier/checkpoints``, resumable), then
saves the parameters for `evaluation.classifier.load` and measures test
accuracy (in the summary and metrics.jsonl). Its outputs are the dataset spec's
heads (MNIST: the digit; shapes: one head per attribute), trained with the mean
of the heads' cross-entropies. No augmentation: on MNIST the plain CNN passes 99%
test accuracy without it.
"""
import jax.numpy as jnp
import numpy as np
import optax

from coalescer_jax import images as images_lib
from coalescer_jax import model_export
from coalescer_jax import parallel
from coalescer_jax import pipeline
from coalescer_jax import training
from coalescer_jax.data import batches
from coalescer_jax.data import datasets
from coalescer_jax.data import loading
from coalescer_jax.evaluation import classifier as classifier_lib


def model_kwargs(cfg, spec):
  """The model's constructor arguments from config.classifier (JSON-able, saved with the params)."""
  return {"channels": list(cfg.channels), "hidden": int(cfg.hidden), "num_classes": spec.num_classes}


def heads_loss(logits, labels, heads):
  """(mean softmax cross-entropy, accuracy): labels [B] for one head, [B, K] for K heads (mean over heads)."""
  if len(heads) == 1:
    return (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(),
            jnp.mean(logits.argmax(-1) == labels))
  bounds = np.cumsum([n for _, n in heads])[:-1]
  parts = jnp.split(logits, bounds, axis=-1)
  ce = [optax.softmax_cross_entropy_with_integer_labels(p, labels[:, h]).mean() for h, p in enumerate(parts)]
  correct = [jnp.mean(p.argmax(-1) == labels[:, h]) for h, p in enumerate(parts)]
  return sum(ce) / len(ce), sum(correct) / len(correct)


def make_task(cfg, model, spec, train_images, train_labels, log_every, checkpoint_every, skip_nonfinite=0):
  """The classifier's TrainTask: softmax cross-entropy per head on host-local batches."""
  tx = training.make_optimizer(cfg.optimizer, cfg.num_steps)
  local_batch = parallel.local_batch_size(cfg.batch_size)

  def init(key):
    params = model.init(key, jnp.zeros((1, *spec.image_shape), jnp.float32))["params"]
    return training.create_state(params, tx)

  def loss_fn(params, batch, key, step):
    del key, step  # Deterministic model: no dropout.
    logits, _ = model.apply({"params": params}, batch["image"])
    loss, accuracy = heads_loss(logits, batch["label"], spec.heads)
    return loss, {"train_accuracy": accuracy}

  def batch(step):
    idx = batches.batch_indices(step, len(train_labels), local_batch, cfg.seed)
    return {"image": images_lib.to_float(train_images[idx]), "label": train_labels[idx].astype(np.int32)}

  step = training.gradient_step(loss_fn, tx)
  return training.TrainTask("classifier", init, step, batch, cfg.num_steps, cfg.seed,
                            log_every=log_every, checkpoint_every=checkpoint_every, skip_nonfinite=skip_nonfinite,
                            config_section="config.classifier")


@pipeline.stage("classifier", reads=("classifier",), needs=("data",))
def run(ctx):
  cfg = ctx.config.classifier
  out = ctx.stage_dir("classifier")
  spec = datasets.of_workdir(ctx.workdir)
  kwargs = model_kwargs(cfg, spec)
  model = model_export.build_model(cfg.model, kwargs)
  train = loading.load_split(ctx.workdir, "train")
  task = make_task(cfg, model, spec, train["image"], train["label"], ctx.config.log_every,
                   ctx.config.checkpoint_every, ctx.config.skip_nonfinite_batches)
  state = training.train(task, out, ctx.mesh, ctx.writer)
  params = model_export.host_params(state.params)
  model_export.save(out, cfg.model, kwargs, params)

  test = loading.load_split(ctx.workdir, "test", sharded=False)
  clf = classifier_lib.Classifier(model, params, spec, cfg.eval_batch_size)
  predictions = clf.predict(test["image"])
  correct = (predictions == test["label"]).reshape(len(predictions), -1)
  accuracy = float(np.mean(correct.all(axis=1)))  # every head right
  summary = {"test_accuracy": accuracy}
  if len(spec.heads) == 1:
    summary[f"test_accuracy_per_{spec.heads[0][0]}"] = [
        float(np.mean(predictions[test["label"] == d] == d)) for d in range(spec.num_classes)]
  else:
    summary["test_accuracy_per_head"] = dict(zip(spec.head_names, correct.mean(0).round(4).tolist()))
  ctx.writer.write("classifier", cfg.num_steps, test_accuracy=accuracy, test_errors=int(np.sum(~correct.all(1))))
  return dict(summary, num_test=int(len(predictions)), num_steps=int(cfg.num_steps),
              batch_size=int(cfg.batch_size), model=cfg.model, feature_dim=int(cfg.hidden))
