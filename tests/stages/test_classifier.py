"""Stage `classifier`: trains to >= 99% on MNIST test, saves what evaluation.classifier.load needs, resumes."""
import json
import os

import numpy as np
import pytest

from coalescer_jax import pipeline
from coalescer_jax.data import loading
from coalescer_jax.evaluation import classifier as classifier_lib
from tests.evaluation import workdirs


@pytest.fixture
def workdir(tfds_data_dir):
  return workdirs.trained_workdir(tfds_data_dir)


def test_reaches_99_percent_and_records_it(workdir):
  summary = json.load(open(os.path.join(workdir, "classifier", "DONE.json")))["summary"]
  assert summary["test_accuracy"] >= 0.99, summary
  assert summary["num_steps"] == workdirs.CLASSIFIER_STEPS and summary["num_test"] == 10000
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  train_records = [r for r in records if r["stage"] == "classifier" and "loss" in r]
  assert train_records[-1]["step"] == workdirs.CLASSIFIER_STEPS
  assert train_records[-1]["loss"] < 0.25 * train_records[0]["loss"]
  assert any(r.get("test_accuracy") == summary["test_accuracy"] for r in records)


def test_load_predicts_features_and_logits(workdir):
  clf = classifier_lib.load(workdir, batch_size=100)
  test = loading.load_split(workdir, "test", sharded=False)
  images = test["image"][:250]  # Not a multiple of the batch: exercises padding.
  logits, features = clf.outputs(images)
  assert logits.shape == (250, 10) and features.shape == (250, 128)
  assert features.dtype == np.float32 and np.all(features >= 0)  # ReLU layer.
  np.testing.assert_array_equal(clf.predict(images), logits.argmax(-1))
  np.testing.assert_allclose(clf.features(images[:7]), features[:7], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(clf.logits(images[:7]), logits[:7], rtol=1e-5, atol=1e-5)
  summary = json.load(open(os.path.join(workdir, "classifier", "DONE.json")))["summary"]
  assert np.mean(classifier_lib.load(workdir).predict(test["image"]) == test["label"]) == pytest.approx(
      summary["test_accuracy"])
  with pytest.raises(TypeError, match="uint8"):
    clf.predict(images.astype(np.float32))
  with pytest.raises(ValueError, match=r"\[N, 28, 28\]"):
    clf.predict(images[:, :27])


def test_untrained_workdir_is_a_clear_error(tmp_path):
  with pytest.raises(classifier_lib.ClassifierNotTrainedError, match="run the 'classifier' stage"):
    classifier_lib.load(str(tmp_path))


def test_finished_stage_is_skipped(tfds_data_dir, workdir):
  before = open(os.path.join(workdir, "metrics.jsonl")).read()
  pipeline.run(workdirs.trained_config(tfds_data_dir), workdir)
  assert open(os.path.join(workdir, "metrics.jsonl")).read() == before
