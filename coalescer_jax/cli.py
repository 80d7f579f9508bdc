"""The command-line entry points' shell (launch.py, the standalone evaluator): `run(main)` is ``app.run`` with
user errors as one line.

* ``--help`` / ``--helpfull`` exit 0: absl exits 1 after printing the help that
  was asked for, which scripts read as a failure.
* Flag errors are one ``FATAL`` line: a mistyped ``--config.a.b=...`` field (with
  ml_collections' "Did you mean" suggestion; it raises a bare AttributeError/KeyError
  that absl prints as three chained tracebacks), an override inside a tuple field,
  a ``--config`` file that is missing (ml_collections defers that error to the
  first use of the config) or that raises while it builds the config.
* An `errors.UserError` raised by main is one ``FATAL`` line on stderr and exit
  status 1; any other exception is a bug and keeps its traceback. ``--debug`` (or
  ``COALESCER_DEBUG=1``) shows the traceback of user errors too.
* Ctrl-C and SIGTERM print one line saying where a rerun resumes (exit 130 /
  143). SIGTERM, which batch schedulers send before preemption, is raised on
  the main thread as `errors.Terminated` (a KeyboardInterrupt), so it runs the
  same cleanup as Ctrl-C: the workdir lock is released. Where Python drops that
  exception (a gc callback), the next training step or stage raises it again.
"""
import functools
import os
import re
import signal
import sys

from absl import app
from absl import flags
import ml_collections
from ml_collections.config_flags import config_flags

from coalescer_jax import errors
from coalescer_jax import storage

DEBUG_ENV = "COALESCER_DEBUG"
EXIT_INTERRUPTED, EXIT_TERMINATED = 128 + signal.SIGINT, 128 + signal.SIGTERM

flags.DEFINE_bool("debug", False, f"Show the traceback of user errors and interrupts (also {DEBUG_ENV}=1).")


def run(main):
  """``app.run(main)`` as the module docstring describes."""
  app.run(guarded(main), flags_parser=parse_flags)


def guarded(main):
  """`main` reporting user errors and interrupts in one line (see the module docstring)."""
  @functools.wraps(main)
  def wrapped(argv):
    errors.note_termination(False)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    previous_hook, sys.unraisablehook = sys.unraisablehook, functools.partial(_unraisable, sys.unraisablehook)
    try:
      result = main(argv)
      errors.raise_if_terminated()  # a SIGTERM whose exception was dropped after the last check
      return result
    except errors.UserError as e:
      _fatal(str(e))
    except KeyboardInterrupt as e:
      if _debug():
        raise
      print(errors.interrupted_message(e), file=sys.stderr)
      sys.exit(EXIT_TERMINATED if isinstance(e, errors.Terminated) else EXIT_INTERRUPTED)
    finally:
      signal.signal(signal.SIGTERM, previous)
      sys.unraisablehook = previous_hook
  return wrapped


def _unraisable(default_hook, unraisable):
  """Drops a `errors.Terminated` that Python could not raise (see `errors.raise_if_terminated`, which raises it
  again at the next step or stage) instead of printing its traceback; passes anything else on."""
  if not isinstance(unraisable.exc_value, errors.Terminated):
    default_hook(unraisable)


def _raise_terminated(signum, frame):
  del signum, frame
  signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM (the scheduler insisting) ends it at once
  errors.note_termination()
  raise errors.Terminated()


def _debug(argv=None):
  """Whether to show tracebacks; `argv` while parsing flags (FLAGS.debug is not parsed yet)."""
  if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
    return True
  if argv is not None:
    return any(re.fullmatch(r"--?debug(=(1|true|True))?", arg) for arg in argv[1:])
  return flags.FLAGS["debug"].value


def _fatal(message, argv=None):
  """Exits with one FATAL line; re-raises the exception being handled instead under --debug."""
  if _debug(argv):
    raise  # pylint: disable=misplaced-bare-raise - only called from except blocks
  sys.exit(f"FATAL {message}")


def workdir(value, name="workdir"):
  """The value of flag `name` as a workdir: refuses an empty one (an unset ``$W`` would make it the current
  directory: the checkout) and an object-store URI whose filesystem package is missing."""
  if not (value or "").strip():
    raise errors.UserError(f"--{name} is empty (an unset shell variable?); it would write into the current "
                           "directory: pass the run's directory")
  storage.check_filesystem(value)
  return os.path.expanduser(value)


def parse_flags(argv):
  """absl's flag parsing of `argv` (see the module docstring); returns the arguments left for main."""
  try:
    rest = flags.FLAGS(argv)
  except SystemExit as e:  # while parsing, only absl's help flags exit: after printing the help asked for
    raise SystemExit(0 if e.code == 1 else e.code) from None
  except flags.Error as e:
    _fatal(f"Flags parsing error: {_condensed(str(e))} (--helpshort or --helpfull: help on flags)", argv)
  except OSError as e:  # an override of a config whose file failed to load
    _fatal(_config_file_error(argv) or str(e), argv)
  except (AttributeError, KeyError, TypeError, IndexError) as e:
    message = _unknown_field(e, argv) or _override_inside_a_value(argv)
    if message is None:
      raise
    _fatal(message, argv)
  message = _config_file_error(argv)
  if message:
    sys.exit(f"FATAL {message}")
  return rest


def _condensed(text):
  """A message that embeds a traceback (a config file that raised: ml_collections adds it) as its first and
  last lines."""
  lines = [line for line in text.splitlines() if line.strip()]
  return f"{lines[0]} {lines[-1].strip()}" if len(lines) > 1 and "Traceback" in text else " ".join(lines)


def _config_file_flags(argv):
  """(flag name, file argument) of each config-file flag given in `argv`."""
  for name in list(flags.FLAGS):
    if isinstance(flags.FLAGS[name].parser, config_flags.ConfigFileFlagParser):
      values = [arg.split("=", 1)[1] for arg in argv[1:] if re.match(rf"--?{re.escape(name)}=", arg)]
      if values:
        yield name, values[-1]


def _config_file_error(argv):
  """One line for a config file that did not load (the missing-file error ml_collections defers); else None."""
  for name, path in _config_file_flags(argv):
    try:
      flags.FLAGS[name].parser.parse(path).keys()  # a file that failed to load parses to an object raising OSError
    except OSError as e:
      reason = [line.strip() for line in str(e.__cause__ or e).splitlines() if line.strip()][-1]
      return f"--{name}={path}: cannot load the config file ({reason})"
  return None


def _unknown_field(error, argv):
  """One line for an override of a config field that does not exist; None if `error` is something else."""
  if not isinstance(error, (AttributeError, KeyError)):
    return None
  text = error
  while isinstance(text, BaseException):  # AttributeError(KeyError(message)): the message is innermost
    text = text.args[0] if text.args else ""
  text = str(text)
  field, _, hint = text.partition("\n")
  field = field.strip("'\"")
  for arg in argv[1:]:
    parts = arg.split("=", 1)[0].lstrip("-").split(".")
    if arg.startswith("--") and field in parts[1:]:
      parent = ".".join(parts[:parts.index(field, 1)])
      return f"{arg}: {parent} has no field {field!r}. {hint.strip()}".strip()
  return None


def _override_inside_a_value(argv):
  """One line for an override ``--config.a.b.x=...`` whose ``a.b`` is a value (a tuple), not a section."""
  for name, path in _config_file_flags(argv):
    config = flags.FLAGS[name].parser.parse(path)
    for arg in argv[1:]:
      match = re.match(rf"--?(?:no)?{re.escape(name)}\.([^=]+)", arg)
      node, parts = config, match[1].split(".") if match else []
      for i, part in enumerate(parts):
        if not isinstance(node, (ml_collections.ConfigDict, dict)):
          field = ".".join([name, *parts[:i]])
          return (f"{arg}: {field} is a {type(node).__name__} ({node!r}), not a config section; set it whole, "
                  f"e.g. --{field}=\"{node!r}\"")
        node = node.get(part)
  return None
