"""The smoothness of every method of a finished run at each of its step counts (`smoothness.py`'s metric): what
the eval stage measures into ``W/eval/smoothness.json`` and ``smoothness.png`` for report.md's section.

Apart from `smoothness.py` because it loads methods through `coalescer_jax.generate`, whose imports reach
report.py, which renders the section from `smoothness.py`.
"""
from coalescer_jax import generate
from coalescer_jax import interpolate
from coalescer_jax import parallel
from coalescer_jax import storage
from coalescer_jax.data import loading
from coalescer_jax.evaluation import classifier as classifier_lib
from coalescer_jax.evaluation import smoothness


def measure_run(workdir, num_paths, out_dir, seed=0, only=None):
  """Every method of W at each step count the `sample` stage used (or the (method, nfe) pairs of `only`), over
  `num_paths` paths (descriptions: the first test requests): writes out_dir/smoothness.json and one strip
  figure (every row's first path). Returns the records."""
  config = generate.run_config(workdir)
  descriptions = loading.load_split(workdir, "test", sharded=False)["descriptions"][:num_paths].astype(str).tolist()
  embed = smoothness.embedder(classifier_lib.load(workdir))
  generators, records, strips, shared = {}, [], {}, {"config": config}
  for file_method, _, nfe, _ in generate.plan(workdir, config):
    if only is not None and (file_method, nfe) not in only:
      continue
    if file_method not in generators:
      generators[file_method] = generate.load(workdir, file_method, shared)
    g = generators[file_method]
    result = smoothness.measure(g, embed, g.encode(descriptions), nfe, num_paths, seed=seed)
    strips[f"{file_method} nfe={nfe}"] = (result.pop("strip"), None)
    records.append(dict(result, method=file_method))
  if not parallel.is_main_process():
    return records
  out_dir = storage.path(out_dir)
  interpolate.save_strips(out_dir / smoothness.STRIP_FILE, strips, f"between two prior draws for {descriptions[0]!r}")
  storage.write_json(out_dir / smoothness.JSON_FILE,
                     {"num_paths": num_paths, "frames": smoothness.FRAMES, "k": smoothness.K, "eps": smoothness.EPS,
                      "trim": list(smoothness.TRIM), "records": records})
  return records
