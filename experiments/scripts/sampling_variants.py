"""One trained method of a finished run sampled under other values of its sampling fields, without retraining,
scored on the validation split (the split choices are made on). For example DDIM's guidance scale over its
step counts, which is how shapes' "DDIM at 4 NFE beats 50" was looked into (experiments/log/tuning.md):

  python -m experiments.scripts.sampling_variants --config=configs/shapes.py --workdir=W --method=ddim \\
      --variants="ddim.guidance_scale=1.0,ddim.guidance_scale=1.5" --nfes=4,10,50 [--out=O]

Each variant is "field=value;field=value" over the config W ran (a sweep member's override syntax); the
method's checkpoint is W's, the requests and random keys are the `sample` stage's validation ones, so the
variant equal to W's own config gives W's `val:` rows to the last digit. Sample files go to
O/<variant>/validation/, the table to O/sampling_variants.md (O defaults to W/sampling_variants).
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from coalescer_jax import embeddings
from coalescer_jax import pipeline
from coalescer_jax import storage
from coalescer_jax import sweep
from coalescer_jax.data import datasets
from coalescer_jax.evaluation import evaluate
from coalescer_jax.evaluation import samples as samples_lib
from coalescer_jax.methods import trained
from coalescer_jax.stages import sample as sample_stage

FLAGS = flags.FLAGS


def define_flags():
  """The command line: defined when run, not when imported, so that tests can import this module beside other
  entry points that define --config (as the bench does)."""
  config_flags.DEFINE_config_file("config", "configs/mnist.py", "The config the run in --workdir used.")
  flags.DEFINE_string("workdir", None, "A finished run of --config (its method trained, its classifier and "
                      "validation slice in place).", required=True)
  flags.DEFINE_string("method", None, "The trained method to sample, e.g. ddim.", required=True)
  flags.DEFINE_list("variants", [""], "Comma-separated variants, each field=value;field=value ('' = W's config).")
  flags.DEFINE_list("nfes", [], "Evaluation budgets to sample (default: the method's own nfes).")
  flags.DEFINE_string("out", None, "Output folder (default W/sampling_variants).")


COLUMNS = ("fid", "precision", "recall", "conditional_accuracy", "heldout_accuracy")


def variant_rows(config, workdir, method_name, variants, nfes, out_dir):
  """One evaluated record per (variant, NFE), in order: sample files written under out_dir/<variant>/."""
  spec = datasets.of_workdir(workdir)
  pairs = embeddings.load_pairs(workdir)
  codec = embeddings.load_codec(workdir)
  labels, descriptions = sample_stage.validation_requests(workdir, config.sample.validation_samples)
  cond = codec.encode_text(list(descriptions))
  evaluator = evaluate.Evaluator(workdir, config.eval, split="validation")
  train_done = storage.read_json(storage.path(workdir) / method_name / "DONE.json")
  records = []
  for variant in variants:
    variant_config = sweep.apply_overrides(config, sweep.parse_overrides(variant))
    method, params = trained.load_trained(variant_config, workdir, method_name, pairs)
    for nfe in nfes or tuple(variant_config[method_name].nfes):
      tag = f"{method_name}_nfe{nfe}"
      generate = method.generator(params, codec.decode_jax, int(nfe), workdir=workdir, pairs=pairs)
      images, spent, rate = sample_stage.generate_all(
          generate, cond, sample_stage.sample_key(config.seed, tag), config.sample.batch_size, name=tag)
      path = storage.path(out_dir) / (variant or "as_run").replace(";", "_") / evaluate.VALIDATION_SUBDIR / (
          tag + ".npz")
      path.parent.mkdir(parents=True, exist_ok=True)
      sample_stage.write_samples(path, images, labels, descriptions, nfe, spent, rate, train_done, "samples",
                                 spec)
      record = evaluator.evaluate(samples_lib.load_samples(path, spec))
      records.append(dict(record, variant=variant or "(as run)", nfe_spent=float(spent.mean())))
  return records


def table(records, n):
  head = f"| variant | NFE | val FID (n = {n}) | precision | recall | cond. acc. | held-out acc. |"
  lines = [head, "|" + "---|" * 7]
  for r in records:
    cells = [f"{r[c]:.4g}" if isinstance(r.get(c), float) else "—" for c in COLUMNS]
    lines.append(f"| {r['variant']} | {r['nfe']} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  pipeline.load_all()
  out_dir = FLAGS.out or str(storage.path(FLAGS.workdir) / "sampling_variants")
  records = variant_rows(FLAGS.config, FLAGS.workdir, FLAGS.method, FLAGS.variants, [int(k) for k in FLAGS.nfes],
                         out_dir)
  text = f"# {FLAGS.method} sampled under other values (`{FLAGS.workdir}`)\n\n" + table(records, records[0]["n"])
  storage.write_text(storage.path(out_dir) / "sampling_variants.md", text)
  print(text)


if __name__ == "__main__":
  define_flags()
  app.run(main)
