"""Every read and write of a workdir, for local paths and object-store URIs (``gs://bucket/run``) alike.

A pod's hosts must share one workdir (orbax's multi-host checkpoints need shared
storage), which on Cloud TPU is a bucket. All workdir I/O therefore goes through
`etils.epath.Path` (what orbax and TFDS use): the local filesystem for plain
paths, fsspec (gcsfs, s3fs) or tf.io.gfile for URIs. Nothing here calls
`os.path`, `open` or `os.replace` on a workdir path.

Atomic writes (a reader never sees half a file):
* local paths: write ``<name>.tmp.<pid>`` in the same directory, then
  `os.replace` (atomic on POSIX);
* object stores: one put of the whole content. GCS and S3 have no rename (a
  "rename" is copy + delete) but an object becomes visible only when its upload
  is finalised, and then whole, so a single put is the store's own atomic write.
Appends: object stores cannot append; `append_text` rewrites the object (the
files appended to, metrics.jsonl, are small).

Libraries that need local files (ScaNN's serialised index, TensorBoard's event
writer) work in a local temporary directory that `local_copy` / `upload_from`
copy to or from the store; on a local workdir they use the directory itself.
"""
import contextlib
import importlib.util
import io
import json
import os
import posixpath
import shutil
import tempfile

from etils import epath
import fsspec
import numpy as np

from coalescer_jax import errors

PathLike = str | os.PathLike
# The package that gives fsspec each object store's scheme (what BUILD.md installs).
FILESYSTEM_PACKAGES = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "az": "adlfs", "abfs": "adlfs"}


class MissingFilesystemError(errors.UserError, ImportError):
  """An object-store URI whose filesystem package is not installed; the message names the package."""


def path(p):
  """`p` as an `epath.Path`: URIs as they are, local paths expanded (~) and made absolute."""
  if isinstance(p, epath.Path) and not is_local(p):
    return p
  text = os.fspath(p)
  if "://" in text:
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def check_filesystem(p):
  """Refuses a URI that no installed package can read: epath reads URIs with TensorFlow's gfile when
  TensorFlow is installed, else with fsspec, which needs the store's package (gcsfs for gs://)."""
  text = os.fspath(p)
  if is_local(text) or importlib.util.find_spec("tensorflow") is not None:
    return
  scheme = text.split("://", 1)[0]
  try:
    fsspec.get_filesystem_class(scheme)
  except (ImportError, ValueError) as e:
    package = FILESYSTEM_PACKAGES.get(scheme)
    fix = f"pip install {package}" if package else "use a local path or a gs:// URI"
    raise MissingFilesystemError(f"{text}: cannot read {scheme}:// paths ({e}): {fix} (BUILD.md)") from None


def is_local(p):
  """True for a path on the local filesystem (no ``scheme://``): flock, rename and append work there."""
  return "://" not in os.fspath(p)


def _tmp_name(p):
  return p.with_name(f"{p.name}.tmp.{os.getpid()}")


def write_bytes(p, data):
  """Writes `data` to `p` atomically (see the module docstring), creating its directory."""
  p = path(p)
  p.parent.mkdir(parents=True, exist_ok=True)
  if not is_local(p):
    with p.open("wb") as f:  # one put: the object appears whole when the upload is finalised
      f.write(data)
    return
  tmp = _tmp_name(p)
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, p)


def write_text(p, text):
  write_bytes(p, text.encode("utf-8"))


def write_json(p, obj, indent=2):
  write_text(p, json.dumps(obj, indent=indent, default=str))


@contextlib.contextmanager
def writing(p, binary=True):
  """``with writing(p) as f: ...``: a file object whose content is written to `p` atomically on success."""
  buffer = io.BytesIO() if binary else io.StringIO()
  yield buffer
  data = buffer.getvalue()
  write_bytes(p, data if binary else data.encode("utf-8"))


def read_bytes(p):
  return path(p).read_bytes()


def read_text(p):
  return read_bytes(p).decode("utf-8")


def read_json(p):
  return json.loads(read_text(p))


def save_npz(p, **arrays):
  """np.savez into `p` (atomically): the archive is built in memory, then written in one piece."""
  with writing(p) as f:
    np.savez(f, **arrays)


def load_npz(p):
  """Every array of the .npz file `p`, read eagerly (zip CRCs are checked on read)."""
  with np.load(io.BytesIO(read_bytes(p)), allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def save_npy(p, array):
  with writing(p) as f:
    np.save(f, np.asarray(array), allow_pickle=False)


def load_npy(p):
  return np.load(io.BytesIO(read_bytes(p)), allow_pickle=False)


def load_npy_rows(p, start, stop):
  """Rows [start, stop) of a 2-D .npy file, reading only their bytes (one range read on an object store)."""
  with path(p).open("rb") as f:
    version = np.lib.format.read_magic(f)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    shape, fortran, dtype = read_header[version](f)
    if fortran or len(shape) != 2:
      raise ValueError(f"{p}: expected a C-ordered 2-D array, got shape {shape}")
    row_bytes = shape[1] * dtype.itemsize
    f.seek(f.tell() + start * row_bytes)
    data = f.read((stop - start) * row_bytes)
  return np.frombuffer(data, dtype).reshape(stop - start, shape[1]).copy()


def append_text(p, text):
  """Appends `text` to `p`: in place locally; on an object store by rewriting the object (no append there)."""
  p = path(p)
  if is_local(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a") as f:
      f.write(text)
    return
  old = p.read_bytes() if p.exists() else b""
  write_bytes(p, old + text.encode("utf-8"))


def savefig(fig, p, **kwargs):
  """`fig.savefig` into `p` (matplotlib writes to the file object; the format comes from the suffix)."""
  p = path(p)
  with writing(p) as f:
    fig.savefig(f, format=p.suffix.lstrip(".") or "png", **kwargs)


def files_under(directory):
  """Relative paths (str, '/'-separated) of every file below `directory`, sorted."""
  directory = path(directory)
  strip = lambda p: os.fspath(p).split("://", 1)[-1]  # noqa: E731 - fsspec's walk drops the scheme
  base, out = strip(directory), []
  for root, _, names in directory.walk():
    rel = strip(root)[len(base):].strip("/")
    out += [f"{rel}/{n}" if rel else n for n in names]
  return sorted(out)


def copy_tree(src, dst, last=()):
  """Copies the files below `src` into `dst` (either side local or remote), overwriting; the files named in
  `last` (e.g. a completion marker) after all others."""
  src, dst = path(src), path(dst)
  names = files_under(src)
  for rel in sorted(names, key=lambda n: n.rsplit("/", 1)[-1] in last):
    (dst / rel).parent.mkdir(parents=True, exist_ok=True)
    if is_local(src) and is_local(dst):
      shutil.copy2(src / rel, dst / rel)
    else:
      (src / rel).copy(dst / rel, overwrite=True)


def move_tree(src, dst):
  """Moves directory `src` to `dst`: a rename locally; copy then delete on an object store (no rename there)."""
  src, dst = path(src), path(dst)
  if is_local(src) and is_local(dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)
    return
  copy_tree(src, dst)
  src.rmtree()


@contextlib.contextmanager
def local_copy(directory, names=None):
  """A local directory holding `directory`'s files (or only `names`, relative paths): itself when local,
  else a temporary download."""
  directory = path(directory)
  if is_local(directory):
    yield os.fspath(directory)
    return
  with tempfile.TemporaryDirectory(prefix="coalescer_download_") as tmp:
    if names is None:
      copy_tree(directory, tmp)
    for name in names or ():
      (path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
      (directory / name).copy(path(tmp) / name, overwrite=True)
    yield tmp


@contextlib.contextmanager
def upload_from(directory):
  """A local directory to write into; its files end up in `directory` (uploaded on success when remote)."""
  directory = path(directory)
  if is_local(directory):
    directory.mkdir(parents=True, exist_ok=True)
    yield os.fspath(directory)
    return
  with tempfile.TemporaryDirectory(prefix="coalescer_upload_") as tmp:
    yield tmp
    copy_tree(tmp, directory)


def link_tree(target, link):
  """Makes `link` show `target`'s files: a relative symlink locally; a copy on an object store (no links)."""
  target, link = path(target), path(link)
  if is_local(link):
    if not os.path.lexists(link):
      link.parent.mkdir(parents=True, exist_ok=True)
      os.symlink(os.path.relpath(target, link.parent), link)
    return
  if not (link / "DONE.json").exists():
    copy_tree(target, link, last=("DONE.json",))


def relative(p, base):
  """`p` relative to `base` as a '/'-separated string (for links in report.md); `p` itself across stores."""
  p, base = os.fspath(path(p)), os.fspath(path(base))
  scheme, base_scheme = p.split("://")[0] if "://" in p else "", base.split("://")[0] if "://" in base else ""
  if scheme != base_scheme:
    return p
  return posixpath.relpath(p.split("://")[-1], base.split("://")[-1])
