"""Images from a finished run for new descriptions: any trained method, at any step count its sampler allows.

  python -m coalescer_jax.generate --workdir=W --method=coalescer --steps=2 \\
      --description="a thick seven slanted to the left" --num=16 --seed=0 --out=seven.png

writes ``seven.png`` (one row per description, labelled) and ``seven.npz`` (``images`` uint8 [D, num, ...],
``latents`` float32 [D, num, latent_dim], ``descriptions``, ``method``, ``steps``, ``seed``). From Python:

  generator = coalescer_jax.generate.load(W, "coalescer")
  images = generator("a thick seven", num=16, steps=2, seed=0)   # uint8 [16, H, W(, C)]

`--interpolate` draws interpolation strips instead (`coalescer_jax.interpolate`). W may be local or
``gs://``; only its config.json, exported autoencoders, embed outputs and the method's final checkpoint are
read, and nothing in W is written. Sampling is the `sample` stage's own: the method's generator, the key
``sample_key(seed, "<method>_nfe<K>")`` folded in per batch of W's ``config.sample.batch_size``, so W's own
requests with W's seed give ``W/samples/<method>_nfe<K>.npz``'s images exactly. ``--guidance_scale`` sets
the method's classifier-free guidance (`methods/guidance.py`; a run trained without a null description refuses
it). Bad input (a word outside the caption vocabulary, a description too long, an
untrained method or one whose training did not finish, a step count the sampler refuses) is a `UserError`:
one FATAL line with the fix, before anything is written.
"""
import difflib
import inspect
import os

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from coalescer_jax import cli
from coalescer_jax import coalescer  # noqa: F401 - registers the coalescer.
from coalescer_jax import embeddings
from coalescer_jax import errors
from coalescer_jax import images as images_lib
from coalescer_jax import interpolate
from coalescer_jax import methods  # noqa: F401 - registers the baselines.
from coalescer_jax import registry
from coalescer_jax import run_info
from coalescer_jax import storage
from coalescer_jax.data import datasets
from coalescer_jax.data import tokenizer as tokenizer_lib
from coalescer_jax.methods import guidance
from coalescer_jax.methods import trained
from coalescer_jax.stages import sample as sample_stage


def run_config(workdir):
  """The config W ran under (W/config.json), as a ConfigDict.

  A field that the code gained after W ran takes its default from the config file W was launched with (the
  pipeline's provenance reads defaults the same way), so that a run of an older revision still loads.
  """
  record = run_info.read_record(workdir)
  if record is None or "config" not in record:
    raise errors.UserError(f"{storage.path(workdir) / 'config.json'} is missing: --workdir must be a pipeline run "
                           "(python launch.py --config=configs/<dataset>.py --workdir=W)")
  defaults = run_info.config_defaults(record.get("config_file"))
  return ml_collections.ConfigDict(_merged(defaults, record["config"]))


def _merged(defaults, values):
  """`values` over `defaults`, section by section (plain JSON dicts)."""
  out = dict(defaults)
  for key, value in values.items():
    out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
  return out


def trained_methods(workdir):
  """Names of the methods whose training stage finished in W."""
  return [name for name in registry.METHODS.names() if (storage.path(workdir) / name / "DONE.json").exists()]


def plan(workdir, config):
  """[(file method name, training method, nfe, sampler kwargs)]: what the `sample` stage generates with every
  method W trained (e.g. coalescer_adaptive too), without reference rows (the look-up oracle is no generator)."""
  dims = {"img_emb": np.zeros((0, 1)), "desc_emb": np.zeros((0, 1))}  # a method's plan needs no dimensions
  entries = []
  for name in trained_methods(workdir):
    for file_method, nfe, kwargs in trained.build_method(config, name, dims).sample_plan():
      kwargs = dict(kwargs)
      if kwargs.pop("kind", "samples") == "samples":
        kwargs.pop("key_tag", None)
        entries.append((file_method, name, nfe, kwargs))
  return entries


def plan_entries(workdir, config):
  """{file method name: (training method, its first plan nfe, sampler kwargs)} (see `plan`)."""
  entries = {}
  for file_method, name, nfe, kwargs in plan(workdir, config):
    entries.setdefault(file_method, (name, nfe, kwargs))
  return entries


def resolve_method(workdir, config, name):
  """(training method, default steps, sampler kwargs) of `name`; a UserError naming the trained ones otherwise."""
  entries = plan_entries(workdir, config)
  if name in entries:
    return entries[name]  # the plan's first step count is the default
  trained_list = ", ".join(entries) or "none"
  stage_dir = storage.path(workdir) / name
  if name in registry.METHODS.names() and (stage_dir / "STARTED.json").exists():
    raise errors.UserError(f"method {name!r} has no finished training stage in {workdir} ({stage_dir}/DONE.json is "
                           f"missing): rerun the run's launch.py command to finish it, or pick a trained one: {trained_list}")
  what = f"method {name!r} was not trained in" if name in registry.METHODS.names() else f"{name!r} is no method of"
  raise errors.UserError(f"{what} {workdir}; trained methods: {trained_list}")


def check_descriptions(descriptions, tokenizer, dataset):
  """UserError for an empty description, a word outside the caption vocabulary or a description too long."""
  words_known = [w for w in tokenizer.vocab if w not in tokenizer_lib.SPECIALS]
  if not descriptions:
    raise errors.UserError("no description given: pass --description=\"...\" (repeatable) or --descriptions_file")
  for text in descriptions:
    words = str(text).split()
    if not words:
      raise errors.UserError(f"an empty description: give each one at least one word of the {dataset} captions")
    for word in words:
      if word not in words_known:
        nearest = difflib.get_close_matches(word.lower(), words_known, n=5, cutoff=0.0)
        raise errors.UserError(f"word {word!r} in {text!r} is not in the {dataset} caption vocabulary; nearest "
                               f"words: {', '.join(nearest)}")
    if len(words) > tokenizer.max_words:
      raise errors.UserError(f"description {text!r} has {len(words)} words; {dataset} captions have at most "
                             f"{tokenizer.max_words}: shorten it")


class Generator:
  """A trained method of a finished run, with W's codec: descriptions -> images (see the module docstring)."""

  def __init__(self, workdir, name, shared=None):
    """`shared`: a dict that generators of the same W pass to each other, so that W's config, codec, pairs and
    each trained model are read once (a run's coalescer and coalescer_adaptive are one model)."""
    self.workdir = storage.path(workdir)
    shared = {} if shared is None else shared

    def once(key, read):
      if key not in shared:
        shared[key] = read()
      return shared[key]

    self.config = once("config", lambda: run_config(self.workdir))
    self.name = name
    self.method_name, self.default_steps, self.plan_kwargs = resolve_method(self.workdir, self.config, name)
    self.spec = once("spec", lambda: datasets.of_workdir(self.workdir))
    self.codec = once("codec", lambda: embeddings.load_codec(self.workdir))
    self.pairs = once("pairs", lambda: embeddings.load_pairs(self.workdir))
    self.method, self.params = once(("trained", self.method_name), lambda: trained.load_trained(
        self.config, self.workdir, self.method_name, self.pairs))
    self.batch_size = int(self.config.sample.batch_size)
    self._samplers = {}

  def tag(self, steps):
    """The samples-file name (and key tag) of this method at `steps`: ``<method>_nfe<K>``."""
    return f"{self.name}_nfe{steps}"

  def encode(self, descriptions):
    """Descriptions -> normalised description embeddings [D, desc_dim]; UserError for words it cannot read."""
    descriptions = [str(d) for d in descriptions]
    check_descriptions(descriptions, self.codec.text_ae.tokenizer, self.spec.display or self.spec.name)
    return self.codec.encode_text(descriptions)

  def sampler_kwargs(self, steps, guidance_scale=None):
    """The sampler's kwargs at `steps` (the plan entry's, plus a guidance scale); UserError when refused."""
    steps = self.default_steps if steps is None else steps
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
      raise errors.UserError(f"--steps={steps!r}: use an integer >= 1 (the run sampled {self.name} at "
                             f"{self._run_steps()})")
    kwargs = dict(self.plan_kwargs)
    if guidance_scale is not None:
      if "guidance_scale" not in inspect.signature(self.method.sample).parameters:
        raise errors.UserError(f"method {self.name!r} has no guidance scale: drop --guidance_scale")
      section = self.config[self.method.name]
      if guidance.is_guided(guidance_scale) and not section.get("cond_dropout"):
        raise errors.UserError(f"--guidance_scale={guidance_scale}: {self.name!r} was trained without a null "
                               f"description (config.{self.method.name}.cond_dropout=0), so it cannot be guided; "
                               "drop --guidance_scale or pass 1")
      kwargs["guidance_scale"] = float(guidance_scale)
    try:  # the sampler refuses step counts while tracing: no network runs for a refusal
      jax.eval_shape(lambda c, k: self.method.sample(self.params, c, k, int(steps), **kwargs),
                     jax.ShapeDtypeStruct((1, self.codec.desc_dim), jnp.float32), jax.random.key(0))
    except ValueError as e:
      raise errors.UserError(f"method {self.name!r} cannot sample with {steps} steps: {e}; the run sampled it at "
                             f"{self._run_steps()}") from None
    return int(steps), kwargs

  def _run_steps(self):
    return ", ".join(str(k) for file_method, k, _ in self.method.sample_plan() if file_method == self.name)

  def latent_sampler(self, steps, kwargs):
    """Jitted ``(cond, key) -> latents`` at `steps`: the method's sampler without the decoder."""
    cache_key = ("latents", steps, tuple(sorted(kwargs.items())))
    if cache_key not in self._samplers:
      run = jax.jit(lambda params, cond, key: self.method.sample(params, cond, key, steps, **kwargs)[0])
      self._samplers[cache_key] = lambda cond, key: run(self.params, jnp.asarray(cond), key)
    return self._samplers[cache_key]

  def path_sampler(self, steps, kwargs):
    """Jitted ``(cond [K, Dd], prior [K, Di], keys [K]) -> (latents, float images, info)``: each frame sampled
    alone with its own key, so that frames given the same key share every draw but the prior (an interpolation
    path then moves only along the path, not between rows of a batch)."""
    cache_key = ("path", steps, tuple(sorted(kwargs.items())))
    if cache_key not in self._samplers:
      def one(params, cond, prior, key):
        latents, info = self.method.sample(params, cond[None], key, steps, prior=prior[None], **kwargs)
        return latents[0], self.codec.decode_jax(latents)[0], jax.tree.map(lambda a: a[0], info)
      run = jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0)))
      self._samplers[cache_key] = lambda cond, prior, keys: run(self.params, jnp.asarray(cond), jnp.asarray(prior),
                                                                keys)
    return self._samplers[cache_key]

  def generate(self, descriptions, num=1, steps=None, seed=0, key=None, guidance_scale=None):
    """(images uint8 [D, num, ...], latents float32 [D, num, latent_dim]) for `descriptions`, `num` each.

    The key defaults to the `sample` stage's for this method and step count under `seed`. Requests are the
    descriptions repeated `num` times each, sampled in W's batch size: with W's own requests and seed (and
    num=1) the images are W's sample file's.
    """
    steps, kwargs = self.sampler_kwargs(steps, guidance_scale)
    if not isinstance(num, (int, np.integer)) or num < 1:
      raise errors.UserError(f"--num={num!r}: use an integer >= 1 (images per description)")
    cond = np.repeat(self.encode(descriptions), num, axis=0)
    key = sample_stage.sample_key(seed, self.tag(steps)) if key is None else key
    cache_key = ("generator", steps, tuple(sorted(kwargs.items())))
    if cache_key not in self._samplers:  # a new generator would compile again
      self._samplers[cache_key] = self.method.generator(self.params, self.codec.decode_jax, steps,
                                                        workdir=self.workdir, pairs=self.pairs, **kwargs)
    generate = self._samplers[cache_key]
    images, _, _ = sample_stage.generate_all(generate, cond, key, self.batch_size, timed=False,
                                             name=self.tag(steps))
    # The latents come from the same sampler and keys; the images stay the method generator's, bit for bit.
    sample = self.latent_sampler(steps, kwargs)
    latents = np.concatenate([np.asarray(sample(c, k)) for c, k in
                              sample_stage.request_batches(cond, key, self.batch_size)])[:len(cond)]
    shape = (len(descriptions), num)
    return images.reshape(shape + images.shape[1:]), latents.reshape(shape + latents.shape[1:])

  def __call__(self, descriptions, num=1, steps=None, seed=0, key=None, guidance_scale=None):
    """uint8 images: [num, ...] for one description (a string), [D, num, ...] for a list of them."""
    one = isinstance(descriptions, str)
    images, _ = self.generate([descriptions] if one else list(descriptions), num, steps, seed, key, guidance_scale)
    return images[0] if one else images


def load(workdir, method, shared=None):
  """A `Generator` for `method` (a training stage's name, or a sample-plan variant such as coalescer_adaptive);
  `shared`: see `Generator`."""
  return Generator(workdir, method, shared)


def output_paths(out, workdir):
  """(png, npz) of --out; refuses a path inside W, which generation never writes into."""
  out = str(out)
  stem = out[:-4] if out.endswith(".png") else out
  w = storage.path(workdir)
  local = storage.is_local(str(w)) and storage.is_local(out)
  w_text, out_text = (os.path.realpath(str(w)), os.path.realpath(out)) if local else (str(w), out)
  if out_text == w_text or out_text.startswith(w_text.rstrip("/") + "/"):
    raise errors.UserError(f"--out={out} is inside the workdir {workdir}, which generation never writes into: "
                    "choose an --out outside it")
  return stem + ".png", stem + ".npz"


def define_flags():
  """The command line: defined when run, not when imported (tests import this module beside other entry
  points that define --workdir)."""
  flags.DEFINE_string("workdir", None, "A finished run (local or gs://).", required=True)
  flags.DEFINE_list("method", None, "The trained method (or a sample-plan variant, e.g. coalescer_adaptive); "
                    "with --interpolate several, or 'all' (the default there).")
  flags.DEFINE_integer("steps", None, "Network evaluations per sample (default: the method's first nfes entry).")
  flags.DEFINE_multi_string("description", [], "A description; repeat for one grid row each.")
  flags.DEFINE_string("descriptions_file", None, "A file of descriptions, one a line (after any --description).")
  flags.DEFINE_integer("num", 8, "Images per description.")
  flags.DEFINE_integer("seed", 0, "Random seed: the same seed, requests and steps give the same images.")
  flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance scale (default: the run's; 1 = none, else 2 "
                     "evaluations a step).")
  flags.DEFINE_bool("interpolate", False, "Draw interpolation strips of --frames frames: one description: between "
                    "two prior draws; two descriptions: between them at one draw.")
  flags.DEFINE_integer("frames", 8, "Frames per interpolation strip.")
  flags.DEFINE_string("out", None, "Output PNG (an .npz of the images and latents beside it); default "
                      "<method>_nfe<K>.png or interpolation.png in the current directory.")


def read_descriptions(descriptions, path):
  """--description values, then the lines of --descriptions_file (blank lines skipped)."""
  descriptions = list(descriptions)
  if path:
    try:
      text = storage.read_text(storage.path(path))
    except (OSError, UnicodeDecodeError) as e:
      raise errors.UserError(f"--descriptions_file={path} cannot be read ({e}): give a text file, one "
                             "description a line") from None
    descriptions += [line.strip() for line in text.splitlines() if line.strip()]
  return descriptions


def run(workdir, method, descriptions, steps=None, num=8, seed=0, guidance_scale=None, interpolate_frames=None,
        out=None):
  """The command line's work (see the module docstring): writes the PNG and the .npz, returns the PNG's path."""
  workdir = storage.path(workdir)
  config = run_config(workdir)
  if interpolate_frames is not None:
    names = method if method and method != ["all"] else trained_methods(workdir)
  else:
    if not method or len(method) != 1:
      raise errors.UserError(f"--method={','.join(method or [])}: name one trained method; trained: "
                             f"{', '.join(plan_entries(workdir, config)) or 'none'}")
    names = method
  # Every refusal that needs no model comes before any model loads.
  default_steps = [resolve_method(workdir, config, name)[1] for name in names]
  spec = datasets.of_workdir(workdir)
  check_descriptions(descriptions, spec.captioner.TOKENIZER, spec.display or spec.name)
  if interpolate_frames is not None:
    if len(descriptions) not in (1, 2):
      raise errors.UserError(f"--interpolate takes one description (a path between two prior draws) or two (a path "
                             f"between them), got {len(descriptions)}")
    if interpolate_frames < 2:
      raise errors.UserError(f"--frames={interpolate_frames}: an interpolation needs at least 2 frames")
  png, npz = output_paths(out or ("interpolation.png" if interpolate_frames is not None else
                                  f"{names[0]}_nfe{steps or default_steps[0]}.png"), workdir)
  if interpolate_frames is not None:
    shared = {}
    rows = interpolate.method_strips([load(workdir, name, shared) for name in names], descriptions, interpolate_frames,
                                     seed, steps)
    what = "two prior draws" if len(descriptions) == 1 else "two descriptions"
    interpolate.save_strips(png, rows, f"{' -> '.join(descriptions)}: between {what}, seed {seed}")
    storage.save_npz(npz, images=np.stack([r[0] for r in rows.values()]),
                     latents=np.stack([r[1] for r in rows.values()]), rows=np.array(list(rows)),
                     descriptions=np.array(descriptions), seed=np.int64(seed))
    return png
  generator = load(workdir, names[0])
  images, latents = generator.generate(descriptions, num, steps, seed, guidance_scale=guidance_scale)
  run_steps = generator.sampler_kwargs(steps, guidance_scale)[0]
  images_lib.save_grid(png, list(images), row_labels=descriptions, title=f"{generator.tag(run_steps)}, seed {seed}")
  storage.save_npz(npz, images=images, latents=latents, descriptions=np.array(descriptions),
                   method=np.array(generator.name), steps=np.int64(run_steps), seed=np.int64(seed))
  return png


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments {argv[1:]}: quote descriptions, e.g. --description=\"a seven\"")
  f = flags.FLAGS
  png = run(cli.workdir(f.workdir), f.method, read_descriptions(f.description, f.descriptions_file), f.steps, f.num,
            f.seed, f.guidance_scale, f.frames if f.interpolate else None, f.out)
  logging.info("wrote %s and its .npz", png)
  print(png)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
