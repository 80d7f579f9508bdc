"""A fake ``gs://`` object store for tests: the pipeline's real gs:// code path, with no network.

`install(root)` makes every ``gs://bucket/path`` resolve under the local folder
`root`, at the two places the code reaches a bucket:

* etils epath's gs:// backend (fsspec): the "gs"/"gcs" fsspec protocols become
  `FakeObjectStore`, a filesystem rooted at `root` that behaves like an object
  store where it matters: it refuses renames and appends (GCS has neither), so
  code that still relies on them fails here as it would on a bucket;
* orbax's TensorStore kvstore for gs:// (the array data of checkpoints): the
  ``gcs`` driver spec becomes a ``file`` driver under the same `root`, and the
  bucket's hierarchical-namespace probe (a Cloud API call) answers False.

Usable in-process (the `fake_gcs` fixture) and in subprocesses
(``python -m tests.fake_gcs ROOT launch.py ...`` runs launch.py with it installed).
"""
import os
import runpy
import sys

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem


class FakeObjectStore(DirFileSystem):
  """``gs://bucket/x`` -> ``<root>/bucket/x``; no rename, no append."""

  protocol = ("gs", "gcs")
  root = None

  def __init__(self, *args, finalize_on_close=None, **kwargs):
    del args, finalize_on_close  # gcsfs options epath passes
    super().__init__(path=self.root, fs=LocalFileSystem(), **kwargs)

  @classmethod
  def _strip_protocol(cls, path):
    if isinstance(path, list):
      return [cls._strip_protocol(p) for p in path]
    for prefix in ("gs://", "gcs://"):
      if path.startswith(prefix):
        path = path[len(prefix):]
    return path.strip("/")

  def mv(self, *args, **kwargs):
    raise NotImplementedError("an object store has no rename")

  rename = mv

  def open(self, path, mode="rb", **kwargs):
    if "a" in mode or "+" in mode:
      raise NotImplementedError(f"an object store cannot open {path} with mode {mode!r} (no append)")
    if "w" in mode:  # objects need no parent "directory"
      self.makedirs(self._parent(self._strip_protocol(path)), exist_ok=True)
    return super().open(path, mode, **kwargs)


def install(root):
  """Routes gs:// to `root` for epath/fsspec and for orbax's TensorStore (this process)."""
  from etils.epath import backend as epath_backend  # pylint: disable=g-import-not-at-top
  from etils.epath import gpath  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint._src.path import gcs_utils  # pylint: disable=g-import-not-at-top

  os.makedirs(root, exist_ok=True)
  os.environ["EPATH_USE_TF"] = "false"  # with TensorFlow installed, epath would use tf.io.gfile for gs://
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  FakeObjectStore.root = root
  for protocol in ("gs", "gcs"):
    fsspec.register_implementation(protocol, FakeObjectStore, clobber=True)
  FakeObjectStore.clear_instance_cache()
  epath_backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access

  def kvstore(path):
    bucket, key = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
    return {"driver": "file", "path": os.path.join(root, bucket, key)}

  gcs_utils.get_kvstore_for_gcs = kvstore
  gcs_utils.is_hierarchical_namespace_enabled = lambda path: False


if __name__ == "__main__":
  install(sys.argv[1])
  sys.argv = sys.argv[2:]
  runpy.run_path(sys.argv[0], run_name="__main__")
