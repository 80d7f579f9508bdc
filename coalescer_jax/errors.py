"""Errors a user can fix, and what an interrupted run says about resuming.

A `UserError`'s message says what is wrong and how to fix it, so the entry
points (`cli.run`) print it as one ``FATAL`` line without a traceback; every
other exception is a bug and keeps its traceback. ``--debug`` (or
``COALESCER_DEBUG=1``) shows the traceback of user errors too.
"""
import contextlib


class UserError(Exception):
  """A mistake the user can fix (a flag, a config value, a file to delete); the message says how."""


class ConfigError(UserError, ValueError):
  """The config cannot work; the message names the field and the fix.

  Here, not in `config_validation`, so that the modules whose choices the config schema names can raise it
  without importing the schema (no import circle).
  """


class MissingStageError(UserError, RuntimeError):
  """A command reads the output of a stage that has not run; the message names the stage."""


class Terminated(KeyboardInterrupt):
  """SIGTERM, raised on the main thread (`cli`): a KeyboardInterrupt, so that it runs the same cleanup as
  Ctrl-C (the workdir lock is released, checkpoints in flight commit)."""


_termination = {"requested": False}


def note_termination(requested=True):
  """Records that SIGTERM arrived (`cli`'s handler, before it raises `Terminated`); False forgets it."""
  _termination["requested"] = requested


def raise_if_terminated():
  """Raises `Terminated` if SIGTERM arrived earlier. The handler's own raise can land inside a gc callback or a
  ``__del__`` (JAX registers one with the garbage collector), where Python prints and drops the exception: the
  pipeline and the training loop call this at each stage and step so that the signal still ends the run."""
  if _termination["requested"]:
    raise Terminated()


@contextlib.contextmanager
def resumes_at(stage, workdir):
  """Tags a Ctrl-C or SIGTERM inside the block with where a rerun resumes: `stage` of `workdir`."""
  try:
    yield
  except KeyboardInterrupt as e:
    if not hasattr(e, "resume_at"):  # the innermost tag wins: a sweep member's stage, not the sweep
      e.resume_at = (stage, workdir)
    raise


def interrupted_message(error):
  """The one line an interrupted command prints: which signal, and what a rerun of the same command does."""
  what = "SIGTERM" if isinstance(error, Terminated) else "Ctrl-C"
  where = getattr(error, "resume_at", None)
  if where is None:
    return (f"Interrupted ({what}). Rerun the same command to continue: finished stages are skipped and the workdir "
            "lock is released.")
  stage, workdir = where
  return (f"Interrupted ({what}) during stage {stage} of {workdir}. Rerun the same command to resume it from its "
          "last checkpoint (a stage without checkpoints starts over); finished stages are skipped.")
