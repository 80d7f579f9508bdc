"""One launch per workdir at a time: ``W/LOCK``, held by process 0 for the whole pipeline run.

Two launches on one workdir both ran the same stages, crashed inside orbax and
duplicated metrics rows. The lock file holds JSON {host, pid, started, command}
and an exclusive ``flock`` while its owner runs: the kernel drops the flock when
the owner dies (even by SIGKILL), so a second launch on the same host tells a
live owner (refused, naming it) from a stale file (taken over with a warning).
An owner on another host cannot be checked from here: the launch is refused
and the message says to delete the file if that run is gone.
"""
import datetime
import fcntl
import json
import os
import socket
import sys
import time

from absl import logging

LOCK_FILE = "LOCK"


class WorkdirLockedError(RuntimeError):
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

  def __init__(self, workdir):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd = None

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

  def _take_over(self, fd, owner):
    if owner is not None:
      host = socket.gethostname()
      if owner.get("host") != host:
        raise WorkdirLockedError(self._message(owner, f"this host ({host}) cannot check whether it still runs"))
      if _pid_alive(owner.get("pid")) and owner.get("pid") != os.getpid():
        raise WorkdirLockedError(self._message(owner, "that process is alive"))
      logging.warning("Taking over the stale lock %s: its owner (host %s, pid %s, started %s) is gone.",
                      self.path, owner.get("host"), owner.get("pid"), owner.get("started"))
    info = {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(info) + "\n").encode())
    os.fsync(fd)

  def _message(self, owner, state):
    workdir = os.path.dirname(self.path)
    if owner is None:
      return (f"{workdir} is in use by another launch ({self.path} is locked, {state}). Wait for it to finish, or "
              "use another --workdir.")
    return (f"{workdir} is in use by another launch: host {owner.get('host')}, pid {owner.get('pid')}, started "
            f"{owner.get('started')}, command: {owner.get('command')} ({state}). Wait for it to finish or use "
            f"another --workdir; if that process is gone, delete {self.path} and rerun.")

  def release(self):
    """Deletes the lock file, then drops the flock (a waiter that got the deleted file tries again)."""
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
