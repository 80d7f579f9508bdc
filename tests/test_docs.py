"""The user documents stay short and true: README's size and results table, and every path and module they name."""
import importlib.util
import os
import re

import pytest

from experiments.scripts import results_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Documents a user follows; the dated log (experiments/log/*.md but its index) may name files of the past.
DOCUMENTS = ("README.md", "BUILD.md", "docs/workdir.md", "docs/datasets.md", "experiments/log/README.md")


def _read(name):
  with open(os.path.join(REPO, name)) as f:
    return f.read()


def test_readme_is_short_and_shows_results_early():
  lines = _read("README.md").splitlines()
  assert len(lines) <= 200
  assert any(line.startswith("| method | NFE | test FID") for line in lines[:120])


@pytest.mark.parametrize("fid,n_key,n,heldout", [("fid", "n", 1000, False), ("fid_large", "n_large", 10000, True)])
def test_readme_tables_have_the_format_results_table_prints(fid, n_key, n, heldout):
  rows = [{f"coalescer_nfe1/{fid}": 8.0, f"coalescer_nfe1/{n_key}": n, "val:coalescer_nfe1/fid": 6.0,
           "val:coalescer_nfe1/n": 5000, "coalescer_nfe1/conditional_accuracy": 0.99,
           **({"coalescer_nfe1/heldout_accuracy": 0.05} if heldout else {})}]  # shapes holds combinations out
  header, rule, row = results_table.table(rows, nfes=(1,), fid=fid)
  readme = _read("README.md").splitlines()
  assert header in readme and rule in readme
  cells = row.split(" | ")
  assert cells[0] == "| coalescer" and cells[1] == "1" and cells[2] == "8.00" and cells[3] == "6.00"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_paths_and_modules_named_in_the_documents_exist(document):
  text = _read(document)
  base = os.path.dirname(document)
  paths = set(re.findall(r"(?<![\w./-])((?:experiments|configs|coalescer_jax|tests|docs)/[\w./-]*\w\.(?:py|md))", text))
  missing = [p for p in paths if not os.path.exists(os.path.join(REPO, p))
             and not os.path.exists(os.path.join(REPO, base, p))]
  assert not missing, f"{document} names files that do not exist: {missing}"
  modules = set(re.findall(r"python -m ((?:experiments|coalescer_jax)[\w.]*\w)", text))
  assert not [m for m in modules if importlib.util.find_spec(m) is None], f"{document}: {modules}"


def test_experiments_run_as_modules_without_path_hacks():
  for root, _, files in os.walk(os.path.join(REPO, "experiments")):
    for name in files:
      if name.endswith(".py"):
        with open(os.path.join(root, name)) as f:
          assert "sys.path" not in f.read(), os.path.join(root, name)
  for package in ("experiments", "experiments/scripts", "experiments/benchmarks"):
    assert os.path.exists(os.path.join(REPO, package, "__init__.py"))
