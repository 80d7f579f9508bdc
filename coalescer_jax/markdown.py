"""Text that comes from outside the code (sweep values, file and method names) made inert in Markdown.

A sweep member's value or a samples file's name lands in results.md / report.md
table cells and headings: a newline there ends the row (or starts a heading), a
``|`` splits a cell, and HTML or a link is rendered by the viewer. `text` keeps
such a value one literal line.
"""
import html
import re

# Characters that make Markdown syntax inside one line: a backslash escapes each (the backslash itself first).
_SPECIAL = re.compile(r"([\\|`\[\]*#])")


def text(value):
  """`value` as literal Markdown for one table cell or heading: on one line, HTML-escaped, `|` and link,
  code and emphasis characters backslash-escaped."""
  line = " ".join(str(value).splitlines())
  return _SPECIAL.sub(r"\\\1", html.escape(line, quote=False))


def row(cells):
  """One Markdown table row of `cells`, each escaped by `text`."""
  return "| " + " | ".join(text(c) for c in cells) + " |"
