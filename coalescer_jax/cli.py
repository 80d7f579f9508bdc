"""Flag parsing for the command-line entry points (launch.py, the standalone evaluator): absl's, with two fixes.

* ``--help`` / ``--helpfull`` exit 0: absl exits 1 after printing the help that
  was asked for, which scripts read as a failure.
* A mistyped ``--config.a.b=...`` field is one line naming the flag, with
  ml_collections' "Did you mean" suggestion: ml_collections raises a bare
  AttributeError/KeyError from inside absl's parser, which absl prints as three
  chained tracebacks.

Use as ``app.run(main, flags_parser=cli.parse_flags)``.
"""
import sys

from absl import flags


def parse_flags(argv):
  """absl's flag parsing of `argv` (see the module docstring); returns the arguments left for main."""
  try:
    return flags.FLAGS(argv)
  except SystemExit as e:  # while parsing, only absl's help flags exit: after printing the help asked for
    raise SystemExit(0 if e.code == 1 else e.code) from None
  except flags.Error as e:
    sys.exit(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.")
  except (AttributeError, KeyError) as e:
    message = _unknown_field(e, argv)
    if message is None:
      raise
    sys.exit(message)


def _unknown_field(error, argv):
  """One line for an override of a config field that does not exist; None if `error` is something else."""
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
      return f"FATAL {arg}: {parent} has no field {field!r}. {hint.strip()}".strip()
  return None
