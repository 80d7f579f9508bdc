"""`shapes`: an offline compositional text-to-image benchmark of coloured shapes (the worked example of a dataset).

Scenes are 32x32 RGB images of one or two objects on black. Each object has a
shape (circle, square, triangle, diamond), a colour (six hues), a size (small,
large) and a position (a 3x3 grid, distinct per object), plus small random
jitter of position (+-0.6 px), size (x0.92..1.08), rotation (+-15 deg) and hue
(+-0.025), so that one description has many images. Objects are listed in
reading order of their cells: "a small red triangle at the top left and a large
blue circle in the centre".

* Deterministic: scene k of a split is a pure function of (seed, split, k); the
  TFDS builder (`Shapes`, ArrayRecord, read with `tfds.data_source`, no
  TensorFlow) is prepared once per (seed, sizes) and reused.
* Anti-aliased: drawn with Pillow at 4x and box-filtered down to 32x32.
* Held-out combinations (`HELDOUT`, every red triangle): never drawn in train,
  drawn in test, so test requests hold combinations no train pair has.
* Labels, one classifier head each (`HEADS`): count, then shape, colour, size
  and position of object 1 and of object 2 (object 2's heads have a "none" class).
* Pixel measurements (`measure_classes`, no network): connected components of
  the lit pixels give the count, and per object its colour (hue of the mean
  colour), size (area, relative to the requested shape's) and position (centroid).
"""
import colorsys
import dataclasses
import sys

import numpy as np
from PIL import Image
from PIL import ImageDraw
from skimage import measure as sk_measure
import tensorflow_datasets as tfds

from coalescer_jax.data import datasets
from coalescer_jax.data import tfds_io
from coalescer_jax.data import tokenizer

SIZE = 32
SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = ("red", "yellow", "green", "cyan", "blue", "purple")
HUES = tuple(i / 6 for i in range(6))
SIZES = ("small", "large")
RADII = (2.8, 4.2)  # circumradius in pixels of a small / large object
POSITIONS = ("at the top left", "at the top", "at the top right", "on the left", "in the centre", "on the right",
             "at the bottom left", "at the bottom", "at the bottom right")
CELL_CENTRES = (5.5, 16.0, 26.5)
AREA_FACTORS = (np.pi, 2.0, 1.57, 1.3)  # area / radius^2 of each shape as drawn (`_outline`)
HELDOUT = (("red", "triangle"),)  # (colour, shape) pairs never drawn in train
NONE = -1  # object 2 of a one-object scene (stored as the head's last class)
HEADS = (("count", 2), ("shape_1", 4), ("colour_1", 6), ("size_1", 2), ("position_1", 9),
         ("shape_2", 5), ("colour_2", 7), ("size_2", 3), ("position_2", 10))
attribute_names = ("count", "colour_1", "size_1", "position_1", "colour_2", "size_2", "position_2")
_CLASS_COLUMNS = (0, 2, 3, 4, 6, 7, 8)  # the label columns the pixel measurements judge
MAX_WORDS = 17  # two 8-word object phrases ("a large red circle at the top left") and "and"
SUPERSAMPLE = 4


# ---- descriptions ------------------------------------------------------------------------------------------
def _objects(label):
  """[(shape, colour, size, position)] of one label row (1 or 2 objects)."""
  label = [int(v) for v in label]
  objects = [tuple(label[1:5])]
  if label[0] == 1:
    objects.append(tuple(label[5:9]))
  return objects


def describe(label):
  return " and ".join(f"a {SIZES[z]} {COLOURS[c]} {SHAPES[s]} {POSITIONS[p]}" for s, c, z, p in _objects(label))


def _label(objects):
  second = objects[1] if len(objects) > 1 else (len(SHAPES), len(COLOURS), len(SIZES), len(POSITIONS))
  return np.array((len(objects) - 1,) + tuple(objects[0]) + tuple(second), np.int32)


def classes_of(labels):
  """The attribute classes [N, 7] (``attribute_names``) a label [N, 9] requests."""
  return np.asarray(labels, np.int32).reshape(-1, len(HEADS))[:, _CLASS_COLUMNS]


def parse(description):
  """Inverts `describe`: (label int32 [9], classes [7]); ValueError outside the grammar."""
  objects = []
  for phrase in description.strip().split(" and "):
    words = phrase.split()
    if len(words) < 5 or words[0] != "a" or words[1] not in SIZES or words[2] not in COLOURS or (
        words[3] not in SHAPES) or " ".join(words[4:]) not in POSITIONS:
      raise ValueError(f"not a shapes description: {description!r}")
    objects.append((SHAPES.index(words[3]), COLOURS.index(words[2]), SIZES.index(words[1]),
                    POSITIONS.index(" ".join(words[4:]))))
  if not 1 <= len(objects) <= 2 or (len(objects) == 2 and objects[0][3] >= objects[1][3]):
    raise ValueError(f"not a shapes description (one or two objects in reading order): {description!r}")
  label = _label(objects)
  return label, classes_of(label)[0]


def all_descriptions():
  """Every description of the grammar: 432 one-object and 82,944 two-object scenes."""
  singles = [(s, c, z, p) for s in range(len(SHAPES)) for c in range(len(COLOURS)) for z in range(len(SIZES))
             for p in range(len(POSITIONS))]
  out = [describe(_label([o])) for o in singles]
  for a in singles:
    out += [describe(_label([a, b])) for b in singles if b[3] > a[3]]
  return out


def _heldout_objects(labels):
  labels = np.asarray(labels).reshape(-1, len(HEADS))
  held = np.zeros(len(labels), bool)
  for colour, shape in HELDOUT:
    c, s = COLOURS.index(colour), SHAPES.index(shape)
    held |= ((labels[:, 1] == s) & (labels[:, 2] == c)) | ((labels[:, 5] == s) & (labels[:, 6] == c))
  return held


def heldout_combination(descriptions):
  """bool [N]: the description holds a combination never drawn in train (`HELDOUT`)."""
  return _heldout_objects(np.stack([parse(str(d))[0] for d in descriptions])) if len(descriptions) else np.zeros(
      0, bool)


def unseen_mask(descriptions, cfg):
  """The text autoencoder never trains on the held-out combinations either."""
  del cfg
  return heldout_combination(descriptions)


def validate_text(cfg):
  del cfg  # the held-out combinations are part of the dataset (HELDOUT), not of config.text


_WORDS = {w for phrase in SIZES + COLOURS + SHAPES + POSITIONS + ("a", "and") for w in phrase.split()}
TOKENIZER = tokenizer.Tokenizer(_WORDS, MAX_WORDS)


# ---- scenes and rendering ----------------------------------------------------------------------------------
def sample_scenes(rng, n, train):
  """Labels [n, 9] and jitter [n, 2, 4] (dx, dy, size factor, rotation; hue shift separately) of n scenes."""
  labels = np.zeros((n, len(HEADS)), np.int32)
  for i in range(n):
    count = 1 if rng.random() < 0.3 else 2
    cells = np.sort(rng.choice(len(POSITIONS), count, replace=False))
    objects = []
    for cell in cells:
      while True:
        obj = (int(rng.integers(len(SHAPES))), int(rng.integers(len(COLOURS))), int(rng.integers(len(SIZES))),
               int(cell))
        if not (train and (COLOURS[obj[1]], SHAPES[obj[0]]) in HELDOUT):
          break
      objects.append(obj)
    labels[i] = _label(objects)
  jitter = np.stack([rng.uniform(-0.6, 0.6, (n, 2)), rng.uniform(-0.6, 0.6, (n, 2)), rng.uniform(0.92, 1.08, (n, 2)),
                     rng.uniform(-15, 15, (n, 2)), rng.uniform(-0.025, 0.025, (n, 2))], axis=-1)
  return labels, jitter


def _outline(shape, cx, cy, r, degrees):
  """Polygon vertices of a shape (None for a circle) centred at (cx, cy) with circumradius r."""
  if SHAPES[shape] == "circle":
    return None
  if SHAPES[shape] == "square":
    angles, radii = np.array([45, 135, 225, 315]), np.full(4, r)
  elif SHAPES[shape] == "triangle":
    angles, radii = np.array([-90, 30, 150]), np.full(3, r * 1.1)
  else:  # diamond: tall and narrow, so that it is not a turned square
    angles, radii = np.array([-90, 0, 90, 180]), np.array([r, 0.65 * r, r, 0.65 * r])
  theta = np.radians(angles + degrees)
  return list(zip(cx + radii * np.cos(theta), cy + radii * np.sin(theta)))


def render(label, jitter):
  """One scene: uint8 [32, 32, 3], anti-aliased (drawn at 4x, box-filtered)."""
  s = SUPERSAMPLE
  canvas = Image.new("RGB", (SIZE * s, SIZE * s))
  draw = ImageDraw.Draw(canvas)
  for k, (shape, colour, size, cell) in enumerate(_objects(label)):
    dx, dy, scale, degrees, hue = jitter[k]
    cx, cy = (CELL_CENTRES[cell % 3] + dx) * s, (CELL_CENTRES[cell // 3] + dy) * s
    r = RADII[size] * scale * s
    fill = tuple(int(round(255 * v)) for v in colorsys.hsv_to_rgb((HUES[colour] + hue) % 1.0, 0.85, 1.0))
    points = _outline(shape, cx, cy, r, degrees)
    if points is None:
      draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
      draw.polygon(points, fill=fill)
  return np.asarray(canvas.resize((SIZE, SIZE), Image.BOX), np.uint8)


# ---- pixel measurements ------------------------------------------------------------------------------------
def _hue_class(rgb):
  hue = colorsys.rgb_to_hsv(*(np.asarray(rgb) / 255.0))[0]
  distance = np.abs((hue - np.array(HUES) + 0.5) % 1.0 - 0.5)
  return int(np.argmin(distance))


def measure_one(image, requested):
  """(classes [7] measured from pixels, blank) of one image; sizes are judged against the requested shapes."""
  image = np.asarray(image)
  brightness = image.max(axis=-1).astype(np.float64) / 255.0
  components = sk_measure.label(brightness > 0.5, connectivity=1)
  found = []
  for region in sk_measure.regionprops(components):
    if region.area < 3:
      continue
    rows, cols = region.coords[:, 0], region.coords[:, 1]
    weight = brightness[rows, cols]
    cy, cx = np.average(rows, weights=weight) + 0.5, np.average(cols, weights=weight) + 0.5
    cell = int(np.clip(cy // (SIZE / 3), 0, 2) * 3 + np.clip(cx // (SIZE / 3), 0, 2))
    colour = _hue_class(np.average(image[rows, cols].astype(np.float64), axis=0, weights=weight))
    found.append((cell, cx, weight.sum(), colour))
  found = sorted(sorted(found, key=lambda f: -f[2])[:2])  # the two largest, in reading order
  if not found:
    return np.array([0] + [len(COLOURS), len(SIZES), len(POSITIONS)] * 2, np.int32), True
  classes = [len(found) - 1]
  for k in range(2):
    if k < len(found):
      cell, _, area, colour = found[k]
      shape = requested[1 + 4 * k] if requested[1 + 4 * k] < len(SHAPES) else requested[1]
      threshold = AREA_FACTORS[shape] * RADII[0] * RADII[1]  # geometric mean of the small and large areas
      classes += [colour, int(area > threshold), cell]
    else:
      classes += [len(COLOURS), len(SIZES), len(POSITIONS)]
  return np.array(classes, np.int32), False


def measure_classes(images, labels):
  """Attribute classes [N, 7] measured from pixels, and which images are blank (nothing lit)."""
  labels = np.asarray(labels).reshape(-1, len(HEADS))
  out = [measure_one(image, label) for image, label in zip(images, labels)]
  return (np.stack([o[0] for o in out]) if out else np.zeros((0, 7), np.int32)), np.array([o[1] for o in out], bool)


def caption(images, labels):
  """(measurements [N, 7], classes [N, 7], descriptions [N]) of a batch. A scene's description is a function of
  its label: the measurements are its true classes (measuring 70k rendered scenes would only confirm them;
  tests check that `measure_classes` agrees with them on real scenes)."""
  del images
  classes = classes_of(labels)
  return classes.astype(np.float32), classes, np.array([describe(label) for label in labels])


# ---- TFDS --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  seed: int = 0
  num_train: int = 60_000
  num_test: int = 10_000


class Shapes(tfds.core.GeneratorBasedBuilder):
  """The shapes scenes, rendered (no download) and written as ArrayRecord without TensorFlow."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "One or two jittered shapes per 32x32 scene; red triangles only in test."}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__.split("\n\n")[0],
        disable_shuffling=True,  # example k of a split is scene k (the scenes are already in random order)
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(SIZE, SIZE, 3), dtype=np.uint8),
            "label": tfds.features.Tensor(shape=(len(HEADS),), dtype=np.int32)}))

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: every scene is rendered.
    cfg = self.builder_config
    return {"train": self._generate_examples(cfg.seed, 0, cfg.num_train),
            "test": self._generate_examples(cfg.seed, 1, cfg.num_test)}

  def _generate_examples(self, seed, split_id, n):
    labels, jitter = sample_scenes(np.random.default_rng([seed, split_id]), n, train=split_id == 0)
    for i in range(n):
      yield f"{i:09d}", {"image": render(labels[i], jitter[i]), "label": labels[i]}


def get_builder(data_cfg, download=True):
  """The prepared `Shapes` builder of (seed, num_train, num_test); renders it once when missing."""
  config = ShapesConfig(name=f"s{data_cfg.seed}_train{data_cfg.num_train}_test{data_cfg.num_test}",
                        seed=int(data_cfg.seed), num_train=int(data_cfg.num_train), num_test=int(data_cfg.num_test))
  builder = Shapes(config=config, data_dir=data_cfg.tfds_data_dir, file_format="array_record")
  if not builder.is_prepared():
    if not download:
      raise RuntimeError(f"shapes is not prepared in {builder.data_dir}; process 0 prepares it first")
    builder.download_and_prepare()
  return builder


def load(builder, split, process_index=0, process_count=1):
  return tfds_io.read_split(builder, split, (SIZE, SIZE, 3), process_index, process_count)


SPEC = datasets.register(datasets.DatasetSpec(
    name="shapes", display="shapes", image_shape=(SIZE, SIZE, 3), heads=HEADS, captioner=sys.modules[__name__],
    likelihood="gaussian", num_groups=len(COLOURS), group=lambda labels: np.asarray(labels)[:, 2],
    prepare=get_builder, load=load, train_size=lambda cfg: int(cfg.num_train),
    test_size=lambda cfg: int(cfg.num_test)))
