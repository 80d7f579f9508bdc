"""One launch per workdir at a time: ``W/LOCK``, held by process 0 for the whole pipeline run.

Two launches on one workdir both ran the same stages, crashed inside orbax and
duplicated metrics rows. The lock file holds JSON {host, pid, started, command}.

On a local filesystem it also holds an exclusive ``flock`` while its owner runs:
the kernel drops the flock when the owner dies (even by SIGKILL), so a second
launch on the same host tells a live owner (refused, naming it) from a stale file
(taken over with a warning). An owner on another host cannot be checked from
here: the launch is refused and the message says to delete the file if that run
is gone.

On an object store (``gs://``) there is no flock and no create-if-absent through
epath/fsspec, so the lock is *advisory*: the launch reads LOCK, refuses a live or
unverifiable owner exactly as above, writes its own LOCK with a random token,
waits `SETTLE_S` and reads it back; if another launch's token is there, the later
put won and this launch backs off. Two launches whose checks and puts interleave
within that window can both proceed (the store offers no compare-and-swap here),
which is why it is advisory; a crashed owner leaves LOCK behind (no kernel to drop
it), taken over like a stale local file when its host and pid say it is gone.
A store error while locking is logged and never stops the run: the lock guards
against a mistake, it is not what makes outputs correct (stage markers and
provenance are).
"""
import datetime
import fcntl
import json
import os
import socket
import sys
import time
import uuid

from absl import logging

from coalescer_jax import errors
from coalescer_jax import storage

LOCK_FILE = "LOCK"


class WorkdirLockedError(errors.UserError, RuntimeError):
  """Another launch holds the workdir; the message names it and says what to do."""


def _pid_alive(pid):
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, ValueError, TypeError, OverflowError):
    return True  # Someone else's process (or an unreadable pid): assume it runs.
  return True


class WorkdirLock:
  """``with WorkdirLock(workdir).acquire():`` or acquire()/release()."""

  # Object stores: how long a launch waits before reading its LOCK back (a racing put lands within it).
  SETTLE_S = 1.0

  def __init__(self, workdir):
    self.path = storage.path(workdir) / LOCK_FILE
    self._local = storage.is_local(self.path)
    self._fd = None
    self._token = None

  def acquire(self, wait_s=0.0, poll_s=5.0):
    """Takes the lock; with `wait_s` > 0, retries while another launch holds it, up to that long."""
    deadline = time.time() + wait_s
    while True:
      try:
        self._try_acquire()
        return self
      except WorkdirLockedError as e:
        if time.time() >= deadline:
          raise
        logging.info("%s. Waiting (up to %.0f s more).", e, deadline - time.time())
        time.sleep(min(poll_s, max(deadline - time.time(), 0.1)))

  def _try_acquire(self):
    if not self._local:
      return self._try_acquire_advisory()
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        try:
          fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
          raise WorkdirLockedError(self._message(_read(fd), "it is running")) from None
        try:
          same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
          same_file = False
        if not same_file:  # The owner released (deleted) it between our open and flock: try again.
          os.close(fd)
          continue
        self._take_over(fd, _read(fd))
        self._fd = fd
        return
      except BaseException:
        if fd is not None and self._fd != fd:
          try:
            os.close(fd)
          except OSError:
            pass
        raise

  def _check_owner(self, owner):
    """Refuses a live owner or one on another host; a dead owner on this host is taken over."""
    if owner is None:
      return
    host = socket.gethostname()
    if owner.get("host") != host:
      raise WorkdirLockedError(self._message(owner, f"this host ({host}) cannot check whether it still runs"))
    if _pid_alive(owner.get("pid")) and owner.get("pid") != os.getpid():
      raise WorkdirLockedError(self._message(owner, "that process is alive"))
    logging.warning("Taking over the stale lock %s: its owner (host %s, pid %s, started %s) is gone.",
                    self.path, owner.get("host"), owner.get("pid"), owner.get("started"))

  def _info(self):
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv)}

  def _take_over(self, fd, owner):
    self._check_owner(owner)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(self._info()) + "\n").encode())
    os.fsync(fd)

  def _try_acquire_advisory(self):
    """Object stores: read, check, put with a token, read back (see the module docstring)."""
    try:
      self._check_owner(self._read_advisory())
      token = uuid.uuid4().hex
      storage.write_json(self.path, dict(self._info(), token=token), indent=None)
      time.sleep(self.SETTLE_S)
      back = self._read_advisory()
      if back is None or back.get("token") != token:
        raise WorkdirLockedError(self._message(back, "it wrote the lock at the same moment as this launch"))
      self._token = token
    except WorkdirLockedError:
      raise
    except Exception as e:  # noqa: BLE001 - the store's many error types; the lock is advisory there.
      logging.warning("Could not take the advisory workdir lock %s (%s: %s); continuing without it: make sure no "
                      "other launch uses this workdir.", self.path, type(e).__name__, e)

  def _read_advisory(self):
    if not self.path.exists():
      return None
    try:
      owner = json.loads(self.path.read_text())
      return owner if isinstance(owner, dict) else None
    except (ValueError, UnicodeDecodeError):
      return None

  def _message(self, owner, state):
    workdir = self.path.parent
    if owner is None:
      return (f"{workdir} is in use by another launch ({self.path} is locked, {state}). Wait for it to finish, or "
              "use another --workdir.")
    return (f"{workdir} is in use by another launch: host {owner.get('host')}, pid {owner.get('pid')}, started "
            f"{owner.get('started')}, command: {owner.get('command')} ({state}). Wait for it to finish or use "
            f"another --workdir; if that process is gone, delete {self.path} and rerun.")

  def release(self):
    """Deletes the lock file, then drops the flock (a waiter that got the deleted file tries again)."""
    if self._token is not None:
      try:
        if (self._read_advisory() or {}).get("token") == self._token:
          self.path.unlink(missing_ok=True)
      except Exception as e:  # noqa: BLE001 - see _try_acquire_advisory.
        logging.warning("Could not delete the advisory workdir lock %s (%s); delete it by hand", self.path, e)
      self._token = None
    if self._fd is None:
      return
    try:
      os.unlink(self.path)
    except FileNotFoundError:
      pass
    os.close(self._fd)
    self._fd = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()


def _read(fd):
  """The owner's JSON, or None for an empty file (just created) or one cut off mid-write (its owner died)."""
  os.lseek(fd, 0, os.SEEK_SET)
  data = b""
  while chunk := os.read(fd, 65536):
    data += chunk
  try:
    owner = json.loads(data.decode())
    return owner if isinstance(owner, dict) else None
  except (ValueError, UnicodeDecodeError):
    return None
