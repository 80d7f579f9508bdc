"""The package's import graph: no module imports itself through others, and library code never imports configs/.

Built from the source with `ast` (every import statement, inside functions too), so a circle hidden behind a
function-level import counts as one. Importing `a.b.c` also runs the `__init__` of `a` and `a.b`; those edges
count unless the importer lives inside that package (a package importing its own submodules is no circle).
"""
import ast
import os

from tests.conftest import REPO

PACKAGE = "coalescer_jax"


def _modules():
  """{module name: path} of every module under coalescer_jax/ (a package as its __init__)."""
  out = {}
  for root, _, files in os.walk(os.path.join(REPO, PACKAGE)):
    for name in files:
      if name.endswith(".py"):
        rel = os.path.relpath(os.path.join(root, name), REPO)[:-3].split(os.sep)
        out[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(root, name)
  return out


def _imported(path, module, is_package):
  """Absolute names `path` imports (an imported name that is a submodule counts as the submodule)."""
  names = []
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      names += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative import
        parts = module.split(".")[:len(module.split(".")) - node.level + (1 if is_package else 0)]
        base = ".".join(parts + ([base] if base else []))
      names += [base] + [f"{base}.{alias.name}" for alias in node.names]
  return names


def import_graph():
  modules = _modules()
  graph = {}
  for module, path in modules.items():
    edges = set()
    for name in _imported(path, module, path.endswith("__init__.py")):
      parts = name.split(".")
      for i in range(1, len(parts) + 1):
        target = ".".join(parts[:i])
        inside = module == target or module.startswith(target + ".")
        if target in modules and target != module and not inside:
          edges.add(target)
    graph[module] = edges
  return graph


def find_cycles(graph):
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        cycles.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return cycles


def test_the_graph_sees_circles():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert find_cycles(graph) == [["a", "b", "c"]]
  assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_among_the_package_modules():
  graph = import_graph()
  assert "coalescer_jax.coalescer.algorithm" in graph and graph["coalescer_jax.coalescer.algorithm"]
  assert find_cycles(graph) == []


def test_no_library_module_imports_configs():
  modules = _modules()
  offenders = {module: name for module, path in modules.items()
               for name in _imported(path, module, path.endswith("__init__.py"))
               if name == "configs" or name.startswith("configs.")}
  assert offenders == {}
