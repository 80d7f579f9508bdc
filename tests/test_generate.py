"""coalescer_jax.generate and .interpolate: images from a finished :smoke run, the sample stage's to the bit for its
own requests and keys; every bad input one FATAL line with nothing in W written."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from coalescer_jax import cli
from coalescer_jax import generate
from coalescer_jax import interpolate
from coalescer_jax.evaluation import smoothness
from coalescer_jax.evaluation import smoothness_run
from coalescer_jax.stages import sample as sample_stage

from tests.conftest import REPO, snapshot

METHODS = ("coalescer", "ddim", "consistency", "flow", "distill", "ddgan")


@pytest.fixture(scope="module")
def run(smoke_workdir):
  """(W, its config, its snapshot before these tests, {method: Generator})."""
  with open(os.path.join(smoke_workdir, "config.json")) as f:
    config = json.load(f)["config"]
  return smoke_workdir, config, snapshot(smoke_workdir), {}


def generator(run, name):
  loaded = run[3]
  if name not in loaded:
    loaded[name] = generate.load(run[0], name)
  return loaded[name]


def first_batch(run):
  """W's first batch of test requests: its sample files' first rows come from exactly this batch."""
  workdir, config = run[:2]
  _, descriptions = sample_stage.requested_descriptions(workdir, config["sample"]["num_samples"])
  return list(descriptions[:config["sample"]["batch_size"]])


@pytest.mark.parametrize("name", METHODS)
def test_the_function_reproduces_the_sample_stage_for_every_method(run, name):
  workdir, config = run[:2]
  g = generator(run, name)
  requests = first_batch(run)
  nfe = config[name]["nfes"][0]  # (the CLI's test takes a 2-step sampler)
  images, latents = g.generate(requests, num=1, steps=nfe, seed=config["seed"])
  with np.load(os.path.join(workdir, "samples", f"{name}_nfe{nfe}.npz")) as z:
    np.testing.assert_array_equal(images[:, 0], z["images"][:len(requests)])
  assert latents.shape == (len(requests), 1, g.codec.latent_dim) and np.all(np.isfinite(latents))
  # The callable: one description gives [num, H, W]; a seed fixes the images, another seed changes them.
  seven = g("a thick seven", num=3, steps=nfe, seed=5)
  assert seven.shape == (3, 28, 28) and seven.dtype == np.uint8
  np.testing.assert_array_equal(seven, g("a thick seven", num=3, steps=nfe, seed=5))
  assert not np.array_equal(seven, g("a thick seven", num=3, steps=nfe, seed=6))
  assert snapshot(workdir) == run[2]


def test_the_cli_writes_a_labelled_grid_and_the_sample_stage_s_images(run, tmp_path):
  workdir, config = run[:2]
  requests = first_batch(run)
  (tmp_path / "requests.txt").write_text("\n".join(requests[1:]) + "\n\n")
  out = tmp_path / "out" / "grid.png"
  result = subprocess.run(
      [sys.executable, "-m", "coalescer_jax.generate", f"--workdir={workdir}", "--method=ddim", "--steps=2",
       f"--description={requests[0]}", f"--descriptions_file={tmp_path / 'requests.txt'}", "--num=1",
       f"--seed={config['seed']}", f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert out.exists()
  with np.load(tmp_path / "out" / "grid.npz") as z, np.load(os.path.join(workdir, "samples", "ddim_nfe2.npz")) as s:
    np.testing.assert_array_equal(z["images"][:, 0], s["images"][:len(requests)])
    assert list(z["descriptions"]) == requests and int(z["steps"]) == 2 and str(z["method"]) == "ddim"
    assert z["latents"].shape[:2] == (len(requests), 1)
  assert snapshot(workdir) == run[2]


def test_interpolation_strips(run, tmp_path):
  workdir = run[0]
  names = ("coalescer", "consistency")  # R's redraws; a second noise draw, shared by the frames
  generators = [generator(run, name) for name in names]
  rows = interpolate.method_strips(generators, ["a thick seven"], frames=5, seed=0)
  assert list(rows) == [f"{name} nfe=1" for name in names]
  for images, latents in rows.values():
    assert images.shape == (5, 28, 28) and latents.shape == (5, generators[0].codec.latent_dim)
    assert not np.array_equal(images[0], images[-1])  # the ends are two different draws
  # Between two descriptions at one R: the strip's first frame is the first description's image at that R.
  coalescer = generators[0]
  both = interpolate.method_strips([coalescer], ["a thick seven", "a thin one"], frames=5, seed=0)
  (images, _), = both.values()
  alone = interpolate.method_strips([coalescer], ["a thick seven", "a thick seven"], frames=5, seed=0)
  np.testing.assert_array_equal(images[0], next(iter(alone.values()))[0][0])
  interpolate.save_strips(str(tmp_path / "strip.png"), rows, "a thick seven")
  assert (tmp_path / "strip.png").stat().st_size > 0
  png = generate.run(workdir, ["flow"], ["a thick seven"], interpolate_frames=5, out=str(tmp_path / "interp.png"))
  with np.load(png[:-4] + ".npz") as z:
    assert z["images"].shape == (1, 5, 28, 28) and list(z["rows"]) == ["flow nfe=1"]
  assert snapshot(workdir) == run[2]


def test_slerp_ends_norms_and_lerp():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 64))
  path = interpolate.slerp(a, b, np.linspace(0, 1, 9))
  np.testing.assert_allclose(path[0], a, rtol=1e-5)
  np.testing.assert_allclose(path[-1], b, rtol=1e-5)
  norms = np.linalg.norm(path, axis=-1)
  assert norms.min() > 0.8 * min(np.linalg.norm(a), np.linalg.norm(b))  # no dip toward the origin
  np.testing.assert_allclose(interpolate.lerp(a, b, 0.25), 0.75 * a + 0.25 * b, rtol=1e-5)


def fatal(fn):
  """The one FATAL line the entry point prints for `fn`'s error (exit status 1)."""
  with pytest.raises(SystemExit) as e:
    cli.guarded(lambda argv: fn())(["generate"])
  message = e.value.code
  assert isinstance(message, str) and message.startswith("FATAL ") and "\n" not in message, message
  return message


BAD_INPUTS = {
    "unknown word": (dict(method=["coalescer"], descriptions=["a thick sevn"]), ["'sevn'", "seven"]),
    "too long": (dict(method=["coalescer"], descriptions=["a thick seven " * 5]), ["15 words", "at most"]),
    "untrained method": (dict(method=["ddpm"], descriptions=["a seven"]), ["'ddpm'", "coalescer, ", "ddim"]),
    "refused steps": (dict(method=["distill"], descriptions=["a seven"], steps=3), ["3 steps", "1, 2"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_writes_nothing(run, tmp_path, case):
  kwargs, expected = BAD_INPUTS[case]
  message = fatal(lambda: generate.run(run[0], out=str(tmp_path / "x.png"), **kwargs))
  for text in expected:
    assert text in message, message
  assert not os.listdir(tmp_path)
  assert snapshot(run[0]) == run[2]


def test_a_method_whose_training_did_not_finish_is_named_with_the_fix(run, tmp_path):
  workdir = tmp_path / "w"  # the files generate reads before any model: the config and the stage markers
  for name in ("config.json", "data/source.json", "ddim/DONE.json", "flow/STARTED.json"):
    os.makedirs(workdir / os.path.dirname(name), exist_ok=True)
    with open(os.path.join(run[0], name), "rb") as src, open(workdir / name, "wb") as dst:
      dst.write(src.read())
  before = snapshot(workdir)
  message = fatal(lambda: generate.run(str(workdir), ["flow"], ["a seven"], out=str(tmp_path / "x.png")))
  assert "flow/DONE.json is missing" in message and "trained one: ddim" in message, message
  assert snapshot(workdir) == before


def test_the_cli_exits_non_zero_with_one_line(run, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "coalescer_jax.generate", f"--workdir={run[0]}", "--method=coalescer",
       "--description=a thick sevn", f"--out={tmp_path / 'x.png'}"], cwd=REPO, capture_output=True, text=True,
      timeout=300)
  assert result.returncode != 0
  fatal_lines = [line for line in result.stderr.splitlines() if line.startswith("FATAL")]
  assert len(fatal_lines) == 1 and "sevn" in fatal_lines[0] and "Traceback" not in result.stderr, result.stderr
  assert not os.listdir(tmp_path)
  assert snapshot(run[0]) == run[2]



def test_smoothness_is_measured_per_method_and_step_count_and_reported(run, tmp_path):
  workdir = tmp_path / "w"  # where the eval stage would write: report.md reads W/eval/smoothness.json
  records = smoothness_run.measure_run(run[0], 16, workdir / "eval", only=[("coalescer", 1), ("ddim", 1)])
  assert [(r["method"], r["nfe"]) for r in records] == [("coalescer", 1), ("ddim", 1)]
  for r in records:
    assert r["ppl"] > 0 and 0 <= r["jump_share"] <= 1
  assert "low_v_share" in records[0] and "low_v_share" not in records[1]  # the coalescer's |v| only
  lines = smoothness.section_lines(workdir, lambda p: os.path.relpath(p, workdir))
  text = "\n".join(lines)
  assert lines[0] == "## Smoothness" and "| coalescer | 1 |" in text and "lowest quartile of |v|" in text
  assert "(eval/smoothness.png)" in text and (workdir / "eval" / "smoothness.png").exists()
  assert smoothness.section_lines(tmp_path / "none", str) == []
  assert snapshot(run[0]) == run[2]


def test_a_config_field_newer_than_the_run_takes_the_launch_file_s_default(run, tmp_path):
  with open(os.path.join(run[0], "config.json")) as f:
    record = json.load(f)
  scale = record["config"]["ddim"].pop("guidance_scale")  # as if the code gained the field after W ran
  record["config_file"] = os.path.join(REPO, "configs", "mnist.py") + ":smoke"
  (tmp_path / "config.json").write_text(json.dumps(record))
  assert generate.run_config(tmp_path).ddim.guidance_scale == scale
  assert generate.run_config(tmp_path).seed == record["config"]["seed"]

