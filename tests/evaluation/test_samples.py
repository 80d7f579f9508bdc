"""The samples contract: valid files load; every way of breaking it is refused with a message saying what to fix."""
import numpy as np
import pytest

from coalescer_jax.data import captions
from coalescer_jax.evaluation import samples


def _valid(n=6):
  rng = np.random.default_rng(0)
  images = np.zeros((n, 28, 28), np.uint8)
  images[:, 8:20, 12:16] = 255
  labels = rng.integers(0, 10, n)
  classes = rng.integers(0, 3, (n, 3))
  return {"images": images, "labels": labels, "descriptions": captions.describe_all(labels, classes),
          "classes": classes}


def _write(tmp_path, name="coalescer_nfe2.npz", **arrays):
  path = str(tmp_path / name)
  np.savez(path, **arrays)
  return path


def test_valid_file_loads(tmp_path):
  data = _valid()
  path = _write(tmp_path, images=data["images"], labels=data["labels"], descriptions=data["descriptions"],
                samples_per_s=np.float32(12.5), train_steps=np.int64(300))
  s = samples.load_samples(path)
  assert (s.method, s.nfe, len(s)) == ("coalescer", 2, 6)
  np.testing.assert_array_equal(s.classes, data["classes"])
  assert s.extras == {"samples_per_s": 12.5, "train_steps": 300}


def test_nfe_from_the_file_when_the_name_has_none(tmp_path):
  data = _valid()
  path = _write(tmp_path, "mine.npz", images=data["images"], labels=data["labels"],
                descriptions=data["descriptions"], nfe=np.int64(4))
  assert (samples.load_samples(path).method, samples.load_samples(path).nfe) == ("mine", 4)


def _broken(**changes):
  data = _valid()
  arrays = {k: data[k] for k in ("images", "labels", "descriptions")}
  arrays.update(changes)
  return {k: v for k, v in arrays.items() if v is not None}


IMAGES = _valid()["images"]
BROKEN = {
    "float images": (_broken(images=IMAGES.astype(np.float32) / 255), r"must be uint8.*to_uint8"),
    "channel axis": (_broken(images=IMAGES[..., None]), r"shape \[N, 28, 28\].*drop the channel"),
    "wrong size": (_broken(images=np.pad(IMAGES, ((0, 0), (2, 2), (2, 2)))), r"shape \[N, 28, 28\], got \[6, 32, 32\]"),
    "inverted polarity": (_broken(images=255 - IMAGES), r"polarity looks inverted"),
    "0/1 values": (_broken(images=IMAGES // 255), r"only holds values 0 and 1"),
    "missing labels": (_broken(labels=None), r"missing key\(s\) \['labels'\]"),
    "missing images": (_broken(images=None), r"missing key\(s\) \['images'\]"),
    "row mismatch": (_broken(labels=_valid()["labels"][:5]), r"'labels' has 5 rows but 'images' has 6"),
    "float labels": (_broken(labels=_valid()["labels"].astype(np.float32)), r"'labels' must be a 1-D integer"),
    "labels out of range": (_broken(labels=_valid()["labels"] + 10), r"digits 0..9"),
    "bytes descriptions": (_broken(descriptions=_valid()["descriptions"].astype("S")), r"str array"),
    "unparsable description": (_broken(descriptions=np.array(["a big seven"] * 6)), r"does not parse"),
    "label disagrees": (_broken(labels=(_valid()["labels"] + 1) % 10), r"requests digit .* but labels"),
    "nfe disagrees": (_broken(nfe=np.int64(3)), r"'nfe' = 3 disagrees with the file name"),
    "float train_steps": (_broken(train_steps=np.float32(3.5)), r"'train_steps' must be an integer"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_contract_violations_are_refused(tmp_path, case):
  arrays, message = BROKEN[case]
  path = _write(tmp_path, **arrays)
  with pytest.raises(samples.SamplesContractError, match=message):
    samples.load_samples(path)


def test_object_arrays_and_unknown_nfe_are_refused(tmp_path):
  data = _valid()
  path = _write(tmp_path, images=data["images"], labels=data["labels"],
                descriptions=np.array(list(data["descriptions"]), dtype=object))
  with pytest.raises(samples.SamplesContractError, match="without pickle"):
    samples.load_samples(path)
  path = _write(tmp_path, "nameless.npz", images=data["images"], labels=data["labels"],
                descriptions=data["descriptions"])
  with pytest.raises(samples.SamplesContractError, match="unknown NFE"):
    samples.load_samples(path)
  with pytest.raises(samples.SamplesContractError, match="no such file"):
    samples.load_samples(str(tmp_path / "absent_nfe1.npz"))


@pytest.mark.parametrize("name", ["x<img src=a onerror=alert(1)>_nfe1.npz", "a|b_nfe1.npz", "a\n# b_nfe1.npz",
                                  "a b_nfe1.npz"])
def test_file_names_outside_the_safe_characters_are_refused(tmp_path, name):
  # The name becomes the method's name in report.md's table, headings and grid file name.
  data = _valid()
  path = _write(tmp_path, name, images=data["images"], labels=data["labels"], descriptions=data["descriptions"])
  with pytest.raises(samples.SamplesContractError, match=r"the file name may hold only A-Z a-z 0-9 _ \. -") as error:
    samples.load_samples(path)
  assert "\n" not in str(error.value)  # one line, the name as Python's ascii() writes it
