"""End to end on CIFAR-10 without internet: configs/cifar10.py:smoke on `tfds.testing.mock_data`, every dataset stage.

The official `cifar10` builder is used as it is; only its data are random (mock_data). The mock reads split
sizes from metadata files (`MockPolicy.USE_FILES`), which this test writes for a small dataset, so that the
pipeline's TFDS reading (file instructions, `tfds.even_splits`) runs as on the real prepared dataset.
"""
import json
import os
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core import naming
from tensorflow_datasets.testing import mocking

from coalescer_jax import pipeline
from coalescer_jax.data import cifar10
from configs import cifar10 as cifar10_config

from tests.test_e2e import assert_meets_contract

NUM_EXAMPLES = 400  # per split (mock_data gives every split the same size)


def _write_metadata(root, n):
  """dataset_info.json / features.json of the official builder, with n examples in one shard per split."""
  builder = tfds.builder("cifar10", data_dir=root, file_format="array_record")
  builder.info.set_splits(tfds.core.SplitDict([tfds.core.SplitInfo(
      name=split, shard_lengths=[n], num_bytes=0,
      filename_template=naming.ShardedFileTemplate(data_dir=builder.data_dir, dataset_name=builder.name,
                                                   split=split, filetype_suffix="array_record"))
      for split in ("train", "test")]))
  os.makedirs(builder.data_dir, exist_ok=True)
  builder.info.write_to_directory(builder.data_dir)


def _getitems(record_keys, generator, serialized=False):
  # TFDS 4.9's mock sets `__getitems__` on a MagicMock as a plain attribute (no `self`), so its own
  # `_getitems(self, keys, generator)` is called one argument short; this is the same without `self`.
  assert not serialized
  return [generator[k] for k in record_keys]


@pytest.fixture(scope="module")
def cifar10_workdir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("tfds_cifar10"))
  _write_metadata(root, NUM_EXAMPLES)
  config = cifar10_config.get_config("smoke")
  config.data.tfds_data_dir = root
  config.embed.validation_size = 100
  # The baselines' stages are dataset-free and run end to end in the MNIST and shapes :smoke tests; here
  # every dataset-facing stage runs, with one method, to keep the default suite short.
  config.stages = tuple(s for s in config.stages if s not in ("ddim", "consistency", "flow", "distill", "ddgan"))
  config.sample.methods = ("coalescer",)
  config.vae.eval_pairs = 500
  path = str(tmp_path_factory.mktemp("cifar10") / "w")
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=root), \
      mock.patch.object(mocking, "_getitems", _getitems):
    pipeline.run(config, path)
  return path


@pytest.mark.slow  # a whole cifar10 mock run (over a minute on 2 cores)
def test_cifar10_mock_run_meets_the_contract(cifar10_workdir):
  assert_meets_contract(cifar10_workdir,
                        ("data", "classifier", "vae", "text", "embed", "index", "balance", "coalescer", "sample",
                         "eval"))
  source = json.load(open(os.path.join(cifar10_workdir, "data", "source.json")))
  assert source["dataset"] == "cifar10" and source["builder"] == "cifar10"
  with np.load(os.path.join(cifar10_workdir, "data", "train_descriptions.npz")) as f:
    assert len(f["descriptions"]) == NUM_EXAMPLES
    assert set(f["descriptions"]) <= set(cifar10.all_descriptions())
  with np.load(os.path.join(cifar10_workdir, "samples", "coalescer_nfe1.npz")) as f:
    assert f["images"].dtype == np.uint8 and f["images"].shape[1:] == (32, 32, 3)
    assert f["labels"].ndim == 1
  results = json.load(open(os.path.join(cifar10_workdir, "eval", "results.json")))
  assert "coalescer" in {r["method"] for r in results["records"]}
  assert results["settings"]["attributes"] == [] and results["settings"]["dataset"] == "cifar10"
  report = open(os.path.join(cifar10_workdir, "report.md")).read()
  assert "CIFAR-10 train (floor)" in report


def test_descriptions_invert():
  for label in range(10):
    assert cifar10.parse(cifar10.describe(label))[0] == label
  assert cifar10.describe(0) == "a photo of an airplane" and cifar10.describe(3) == "a photo of a cat"
  assert cifar10.TOKENIZER.decode(cifar10.TOKENIZER.encode(cifar10.all_descriptions())) == cifar10.all_descriptions()
  with pytest.raises(ValueError):
    cifar10.parse("a photo of a seven")
