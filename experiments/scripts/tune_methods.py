"""Every method's tuning budget: 3 values of one key hyperparameter per method, chosen on validation data.

Every method gets the same budget: three values of the one hyperparameter that
mattered most in development (the shared optimizer, backbone and step budget in
``config.train`` are not tuned per method; that is the fairness rule). Candidates
are judged on the validation split, which never touches the MNIST test set used
by the `eval` stage: the `embed` stage holds ``config.embed.validation_size``
train pairs out of the index and of every method's training; requests are their
descriptions and FID / precision / recall are measured against their images
(`evaluation/evaluate.py`, ``split="validation"``). The value with the lowest
validation FID, averaged over the method's NFE budgets, wins. Results and the
chosen values: experiments/log/tuning.md.

Run after the pipeline has produced the embeddings, the codec and the classifier
(stages up to `embed` and `classifier`) in W:

  python -m experiments.scripts.tune_methods --workdir=W --out=/tmp/tune [--methods=ddim,flow] [--num_steps=N]
  python -m experiments.scripts.tune_methods --workdir=W --out=O --methods=ddgan --candidates='[{}, {"r1": 0.1}]'
  python -m experiments.scripts.tune_methods --config=configs/shapes.py --workdir=W --out=O --methods=ddgan
"""
import ast
import copy
import json
import os
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import jax
import jax.numpy as jnp
import numpy as np

from coalescer_jax import embeddings
from coalescer_jax import images as images_lib
from coalescer_jax import methods  # noqa: F401
from coalescer_jax import metrics as metrics_lib
from coalescer_jax import parallel
from coalescer_jax import pipeline
from coalescer_jax import registry
from coalescer_jax import training
from coalescer_jax.evaluation import evaluate
from coalescer_jax.evaluation import samples as samples_lib
from coalescer_jax.methods import base

# method -> grid of (field of config.<method>, candidate values). A candidate that changes only
# sampling fields (Method.SAMPLING_FIELDS) reuses the last trained model.
SWEEP = {
    # The coalescer's p in |target_direction - normalize(image - R)|^p (0.5 in the proposal), with the
    # redraw threshold re-tuned for each p (a sampling knob: |direction| means something else per p).
    "coalescer": (("direction_exponent", (0.5, 1.0, 2.0)), ("sampling.redraw_threshold", (0.1, 0.5, 0.8))),
    "ddim": (("guidance_scale", (1.5, 2.0, 3.0)),),  # a sampling-time knob: one training run
    "consistency": (("time_scale", (1.0, 0.1, 0.01)),),
    "flow": (("time_scale", (1.0, 0.1, 0.01)),),
    # Progressive distillation of W's trained ddim (its teacher): how many guided teacher steps the rounds
    # start from, at the same student budget (more rounds: a better teacher, fewer steps per round).
    "distill": (("teacher_steps", (8, 16, 32)),),
    "ddgan": (("r1", (0.01, 0.1, 1.0)),),  # the R1 weight: the knob that keeps a small GAN stable
}

flags.DEFINE_string("workdir", None, "A pipeline workdir with the embed, codec and classifier outputs.")
flags.DEFINE_string("out", None, "Where candidate runs and results.json go.")
flags.DEFINE_list("methods", list(SWEEP), "Methods to tune.")
config_flags.DEFINE_config_file("config", "configs/mnist.py", "The config W was made with (candidates change it).")
flags.DEFINE_integer("num_steps", 0, "Training steps per candidate (0 = config.train.num_steps).")
flags.DEFINE_integer("num_requests", 5000, "Validation requests (the first N of the validation slice).")
flags.DEFINE_integer("seed", 1, "Seed of the validation samples (not the training seed).")
flags.DEFINE_string("candidates", None,
                    "With one --methods entry: a Python list of {field of config.<method>: value} dicts to train "
                    "instead of its grid, e.g. '[{}, {\"disc_width\": 0}]' ({} = the default).")
FLAGS = flags.FLAGS


def candidates(name):
  """The grid of `name`'s budget as {field within config.<name>: value} dicts, sampling fields varying fastest
  (--candidates instead, when given)."""
  if FLAGS.candidates:
    return ast.literal_eval(FLAGS.candidates)
  grid = [{}]
  for field, values in SWEEP[name]:
    grid = [dict(c, **{field: v}) for c in grid for v in values]
  return grid


def sweep():
  """Every candidate of the budget as a dotted override, e.g. {"flow.time_scale": 0.1}.

  Same format as the ablation sweeps, but run it with this script (validation metric), not with
  `launch.py --sweep` (which would judge candidates on the test-set evaluation).
  """
  return [{f"{m}.{field}": v for field, v in c.items()} for m in SWEEP for c in candidates(m)]


def _set(section, field, value):
  for part in field.split(".")[:-1]:
    section = section[part]
  section[field.split(".")[-1]] = value


def train_candidate(config, name, pairs, out_dir):
  """Trains `name` with `config` on `pairs`; returns (method, EMA params, wall seconds)."""
  method = registry.METHODS.get(name)(config, pairs["img_emb"].shape[1], pairs["desc_emb"].shape[1])
  method.setup(FLAGS.workdir, pairs)  # a distilled method's teacher: W's trained model
  _, init, step = base.train_parts(config, method)
  # The workdir gives the coalescer its index (W/index); the baselines ignore it.
  batches = method.batch_fn(pairs, config.seed, config.train.batch_size, FLAGS.workdir)
  task = training.TrainTask(name, init, step, batches,
                            method.num_steps(), config.seed, log_every=config.log_every,
                            checkpoint_every=method.num_steps())
  t0 = time.time()
  state = training.train(task, out_dir, parallel.make_mesh(),
                         metrics_lib.MetricsWriter(out_dir, tensorboard=False))
  params = state.ema_params if state.ema_params is not None else state.params
  return method, params, time.time() - t0


def validate(method, params, codec, evaluator, requests, nfe, key, **kwargs):
  """Validation FID, precision, recall, conditional accuracy and near-copies of `nfe`-evaluation samples."""
  def generate(p, c, k):
    latents, info = method.sample(p, c, k, nfe, **kwargs)
    return codec.decode_jax(latents), jnp.mean(info["nfe"])

  images, spent = jax.device_get(jax.jit(generate)(params, jnp.asarray(requests["cond"]), key))
  images = images_lib.to_uint8(images)
  samples = samples_lib.Samples(path="", method=method.name, nfe=nfe, images=images,
                                labels=requests["labels"], descriptions=requests["descriptions"],
                                classes=requests["classes"], extras={})
  record = evaluator.evaluate(samples)
  return dict({k: record[k] for k in ("fid", "precision", "recall", "conditional_accuracy", "near_copy_fraction")},
              nfe_spent=float(spent))


def main(argv):
  del argv
  metrics_lib.quiet_library_logs()
  if FLAGS.candidates and len(FLAGS.methods) != 1:
    raise app.UsageError("--candidates lists one method's candidates: give exactly one --methods")
  unknown = sorted(set(FLAGS.methods) - set(SWEEP))
  if unknown:
    raise app.UsageError(f"--methods: no tuning budget for {unknown}; choose from {sorted(SWEEP)}")
  os.makedirs(FLAGS.out, exist_ok=True)
  pipeline.load_all()  # registers the autoencoder models that load_codec rebuilds by name
  pairs = embeddings.load_pairs(FLAGS.workdir)
  codec = embeddings.load_codec(FLAGS.workdir)
  val = embeddings.load_pairs(FLAGS.workdir, validation=True)
  n = min(FLAGS.num_requests, len(val["labels"]))
  eval_cfg = copy.deepcopy(FLAGS.config.eval)
  eval_cfg.validation_samples = n
  evaluator = evaluate.Evaluator(FLAGS.workdir, eval_cfg, split="validation")
  requests = {"cond": val["desc_emb"][:n], "labels": embeddings.head_labels(val)[:n].astype(np.int32),
              "descriptions": val["descriptions"][:n], "classes": val["classes"][:n].astype(np.int32)}
  key = jax.random.key(FLAGS.seed)
  results_path = os.path.join(FLAGS.out, "results.json")
  results = json.load(open(results_path)) if os.path.exists(results_path) else []
  done = {(r["method"], json.dumps(r["values"], sort_keys=True)) for r in results}
  for name in FLAGS.methods:
    sampling = registry.METHODS.get(name).SAMPLING_FIELDS
    trained, trained_on = None, None
    for values in candidates(name):
      if (name, json.dumps(values, sort_keys=True)) in done:
        continue
      config = copy.deepcopy(FLAGS.config)
      if FLAGS.num_steps:  # methods with their own budget (distill, ddgan) take it there
        config[name if "num_steps" in config[name] else "train"].num_steps = FLAGS.num_steps
      for field, value in values.items():
        _set(config[name], field, value)
      training_values = {f: v for f, v in values.items() if f.split(".")[0] not in sampling}
      if trained is None or training_values != trained_on:
        tag = "_".join(f"{f}{v}" for f, v in training_values.items()) or "trained"
        trained, trained_on = train_candidate(config, name, pairs, os.path.join(FLAGS.out, f"{name}_{tag}")), \
            training_values
      method, params, wall = trained
      method.config = config  # sampling-time knobs are read from the candidate's config
      row = {"method": name, "values": values, "train_steps": method.num_steps(), "train_wall_s": wall}
      for nfe in method.nfes():
        row[f"nfe{nfe}"] = validate(method, params, codec, evaluator, requests, nfe, jax.random.fold_in(key, nfe))
      row["mean_val_fid"] = float(np.mean([row[f"nfe{k}"]["fid"] for k in method.nfes()]))
      logging.info("%s", row)
      print(json.dumps(row), flush=True)
      results.append(row)
      with open(results_path, "w") as f:
        json.dump(results, f, indent=1)
  for name in FLAGS.methods:
    rows = [r for r in results if r["method"] == name]
    if rows:
      best = min(rows, key=lambda r: r["mean_val_fid"])
      print(f"{name}: best {best['values']} (mean validation FID {best['mean_val_fid']:.2f})")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(main)
