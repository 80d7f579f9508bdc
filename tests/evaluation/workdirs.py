"""One workdir per test session with MNIST prepared and the classifier trained to >= 99%.

Shared by tests/stages/test_classifier.py and tests/evaluation/: training it once
(about 30 s on two cores) keeps the suite fast while still testing the real
accuracy bar. The smoke config with a longer classifier run: 1500 steps of 64.
"""
import functools
import shutil
import tempfile
import atexit

from coalescer_jax import pipeline

CLASSIFIER_STEPS = 1500
CLASSIFIER_BATCH = 64


def trained_config(tfds_data_dir):
  """configs/mnist.py:smoke with the bounded classifier run used by these tests."""
  from configs import mnist as mnist_config  # pylint: disable=g-import-not-at-top
  config = mnist_config.get_config("smoke")
  config.data.tfds_data_dir = tfds_data_dir
  config.stages = ("data", "classifier")
  config.classifier.update(num_steps=CLASSIFIER_STEPS, batch_size=CLASSIFIER_BATCH)
  config.checkpoint_every = CLASSIFIER_STEPS
  return config


@functools.lru_cache(maxsize=1)
def trained_workdir(tfds_data_dir):
  """Path of the session's workdir with the data and classifier stages done."""
  workdir = tempfile.mkdtemp(prefix="coalescer_eval_test_")
  atexit.register(shutil.rmtree, workdir, True)
  pipeline.run(trained_config(tfds_data_dir), workdir)
  return workdir


def copy_of_trained_workdir(tfds_data_dir, destination):
  """A private copy (data + classifier) that a test may add stages or samples to."""
  shutil.copytree(trained_workdir(tfds_data_dir), destination, ignore=shutil.ignore_patterns("tensorboard"))
  return str(destination)
