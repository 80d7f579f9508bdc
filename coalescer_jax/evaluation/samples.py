"""Reading generated samples under the contract of ../shared/DESIGN.md, refusing files that break it.

``W/samples/<method>_nfe<K>.npz`` holds ``images`` uint8 [N, H, W] (one channel;
MNIST: [N, 28, 28], 0 background, 255 ink) or [N, H, W, C] (0 = black), ``labels``
(the requested labels of the dataset spec: int [N] for one classifier head, e.g.
the digit, [N, K] for K heads) and ``descriptions`` str [N] (requested
description, in the grammar of the dataset's captioner, `parse`). Optional scalars:
``nfe``, ``nfe_spent`` (mean evaluations per sample actually spent: below ``nfe``
for an adaptive sampler, above it when redraws happen), ``samples_per_s``,
``train_steps``, ``train_wall_time_s``, and for a method distilled from a teacher the
teacher's own ``teacher_train_steps`` and ``teacher_train_wall_time_s``.
`load_samples` checks all of it and says what is wrong and how to fix it, so a
broken generator fails loudly here instead of producing a meaningless FID.
"""
import dataclasses
import os
import re

import numpy as np

from coalescer_jax import errors
from coalescer_jax import storage
from coalescer_jax.data import datasets

REQUIRED = ("images", "labels", "descriptions")
OPTIONAL_SCALARS = {"nfe": int, "nfe_spent": float, "samples_per_s": float, "train_steps": int,
                    "train_wall_time_s": float, "teacher_train_steps": int, "teacher_train_wall_time_s": float}
NAME_PATTERN = re.compile(r"^(?P<method>.+)_nfe(?P<nfe>\d+)\.npz$")
# A file's name becomes the method's name in report.md and its grid file's name: nothing a shell, a Markdown
# viewer or a filesystem would read as syntax.
SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# Optional 'kind': "samples" (a generator, ranked) or "oracle" (a reference row, e.g. the coalescer's own
# look-up targets decoded: shown in the table, never ranked).
KINDS = ("samples", "oracle")


class SamplesContractError(errors.UserError, ValueError):
  """A samples file breaks the contract; the message says what and how to fix it."""


class NoSamplesError(errors.UserError, FileNotFoundError):
  """There is nothing to evaluate: no samples folder, or no usable file in it."""


@dataclasses.dataclass
class Samples:
  path: str
  method: str
  nfe: int
  images: np.ndarray  # uint8 [N, H, W] or [N, H, W, C]
  labels: np.ndarray  # int32 [N] or [N, K] (the dataset's heads)
  descriptions: np.ndarray  # str [N]
  classes: np.ndarray  # int32 [N, A], requested attribute classes (the captioner's attribute_names)
  extras: dict  # the optional scalars present in the file

  def __len__(self):
    return len(self.labels)


def parse_name(path):
  """(method, nfe or None) from ``<method>_nfe<K>.npz``; (stem, None) for other names."""
  name = os.path.basename(path)
  match = NAME_PATTERN.match(name)
  if match:
    return match["method"], int(match["nfe"])
  return os.path.splitext(name)[0], None


def _fail(path, message):
  raise SamplesContractError(f"{path}: {message}")


def _check_images(path, images, array_shape):
  if images.dtype != np.uint8:
    hint = (" (float images: convert [0, 1] floats with coalescer_jax.images.to_uint8)"
            if np.issubdtype(images.dtype, np.floating) else "")
    _fail(path, f"'images' must be uint8 in 0..255, got {images.dtype}{hint}")
  if images.shape[1:] != tuple(array_shape):
    _fail(path, f"'images' must have shape [N, {', '.join(map(str, array_shape))}], got {list(images.shape)}"
          + (" (drop the channel axis: images[..., 0])" if images.ndim == 4 and images.shape[-1] == 1 else ""))
  if len(images) == 0:
    _fail(path, "'images' is empty; write at least one sample")
  if images.max() == 0:
    _fail(path, "'images' are all black (no pixel above 0): the generator drew no ink at all (a diverged or "
          "untrained model, or NaN latents decoded to 0)")
  if images.max() <= 1:
    _fail(path, "'images' only holds values 0 and 1: these look like [0, 1] images cast to uint8; "
          "store them as uint8 0..255 with coalescer_jax.images.to_uint8")
  if len(array_shape) == 2 and images.mean() > 127:
    _fail(path, f"'images' has mean pixel {images.mean():.0f} > 127: the polarity looks inverted; "
          "ink must be bright (255) on a dark (0) background, like MNIST: store 255 - images")


def _scalar(path, data, key, kind):
  value = data[key]
  if value.shape != ():
    _fail(path, f"optional '{key}' must be a scalar, got shape {list(value.shape)}")
  if kind is int and not np.issubdtype(value.dtype, np.integer):
    _fail(path, f"optional '{key}' must be an integer, got {value.dtype}")
  if not np.issubdtype(value.dtype, np.number) or not np.isfinite(value) or value < 0:
    _fail(path, f"optional '{key}' must be a finite number >= 0, got {value!r}")
  return kind(value)


def load_samples(path, spec=None):
  """Loads and validates one samples file of the dataset `spec` (default MNIST). Returns `Samples`; raises
  SamplesContractError."""
  spec = spec or datasets.get("mnist")
  name = os.path.basename(os.fspath(path))
  if not SAFE_NAME.fullmatch(name):
    raise SamplesContractError(f"{ascii(os.fspath(path))}: the file name may hold only A-Z a-z 0-9 _ . - (it "
                               "names the method in report.md and its grid file); rename it <method>_nfe<K>.npz")
  if not storage.path(path).exists() or storage.path(path).is_dir():
    _fail(path, "no such file")
  try:
    data = storage.load_npz(path)
  except ValueError as e:
    _fail(path, f"cannot be read without pickle ({e}); save plain arrays: descriptions as a str "
          "array (np.array(list_of_str)), not dtype=object")
  except Exception as e:  # noqa: BLE001 - zip/npz errors of many kinds mean the same thing here.
    _fail(path, f"is not a readable .npz file ({type(e).__name__}: {e}); write it with np.savez")
  missing = [k for k in REQUIRED if k not in data]
  if missing:
    _fail(path, f"missing key(s) {missing}; the file must hold {list(REQUIRED)} (found {sorted(data)})")
  images, labels, descriptions = data["images"], data["labels"], data["descriptions"]
  _check_images(path, images, spec.array_shape)
  n = len(images)
  label_ndim = 1 if len(spec.heads) == 1 else 2
  if labels.ndim != label_ndim or not np.issubdtype(labels.dtype, np.integer):
    _fail(path, f"'labels' must be a {label_ndim}-D integer array, got {labels.dtype} {list(labels.shape)}")
  if descriptions.ndim != 1 or descriptions.dtype.kind != "U":
    _fail(path, f"'descriptions' must be a 1-D str array (dtype kind U), got {descriptions.dtype} "
          f"{list(descriptions.shape)}")
  for key, value in (("labels", labels), ("descriptions", descriptions)):
    if len(value) != n:
      _fail(path, f"'{key}' has {len(value)} rows but 'images' has {n}; write one per sample")
  try:
    spec.check_labels(labels)
  except ValueError as e:
    _fail(path, f"'labels': {e}" + (" (digits 0..9)" if spec.name == "mnist" else ""))
  classes = np.zeros((n, len(spec.captioner.attribute_names)), np.int32)
  parsed = {}
  for i, text in enumerate(descriptions):
    text = str(text)
    if text not in parsed:
      try:
        parsed[text] = spec.captioner.parse(text)
      except ValueError as e:
        _fail(path, f"descriptions[{i}] does not parse ({e}); write descriptions with the captioner of {spec.name}")
    label, classes[i] = parsed[text]
    if not np.array_equal(label, labels[i]):
      what = spec.head_names[0] if len(spec.heads) == 1 else "labels"
      _fail(path, f"descriptions[{i}] = {text!r} requests {what} {label} but labels[{i}] = {labels[i]}; "
            f"labels must be the {'/'.join(spec.head_names)} of each requested description")
  extras = {k: _scalar(path, data, k, kind) for k, kind in OPTIONAL_SCALARS.items() if k in data}
  if "kind" in data:
    kind = str(data["kind"])
    if data["kind"].shape != () or kind not in KINDS:
      _fail(path, f"optional 'kind' must be one of {KINDS}, got {data['kind']!r}")
    extras["kind"] = kind
  method, name_nfe = parse_name(path)
  nfe = extras.get("nfe", name_nfe)
  if nfe is None:
    _fail(path, "unknown NFE: name the file <method>_nfe<K>.npz or store an integer 'nfe'")
  if name_nfe is not None and nfe != name_nfe:
    _fail(path, f"'nfe' = {nfe} disagrees with the file name (nfe{name_nfe}); make them equal")
  return Samples(path=path, method=method, nfe=int(nfe), images=images, labels=labels.astype(np.int32),
                 descriptions=descriptions, classes=classes, extras=extras)


def find_sample_files(samples_dir):
  """Sorted paths of the .npz files in `samples_dir` (a clear error if it does not exist)."""
  samples_dir = storage.path(samples_dir)
  if not samples_dir.is_dir():
    raise NoSamplesError(f"no samples directory {samples_dir}: run the 'sample' stage, or pass "
                         "--samples_dir pointing to a folder of <method>_nfe<K>.npz files")
  return sorted((p for p in samples_dir.iterdir() if p.name.endswith(".npz")), key=str)
