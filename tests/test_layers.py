"""The library's layers read bottom-up: no import cycle (function-level imports included), nothing
below the run store imports it, and no library module imports a binary."""

import ast
import os

import jaxunlearn

PACKAGE = os.path.dirname(jaxunlearn.__file__)
# The layers above the run store: the only modules that may import it.
ABOVE_RUNS = {'jaxunlearn.experiment', 'jaxunlearn.study'}


def _modules() -> dict[str, str]:
  out = {}
  for root, _, names in os.walk(PACKAGE):
    for name in names:
      if name.endswith('.py'):
        path = os.path.join(root, name)
        parts = os.path.relpath(path, os.path.dirname(PACKAGE))[: -len('.py')].split(os.sep)
        if parts[-1] == '__init__':
          parts = parts[:-1]
        out['.'.join(parts)] = path
  return out


def _imports(module: str, path: str, known: set[str]) -> set[str]:
  """Every jaxunlearn module `module` imports, at any depth of its code."""
  with open(path) as f:
    tree = ast.parse(f.read())
  package = module if path.endswith('__init__.py') else module.rpartition('.')[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        base = '.'.join(package.split('.')[: len(package.split('.')) - node.level + 1] + [base])
        base = base.rstrip('.')
      found.add(base)
      found.update(f'{base}.{alias.name}' for alias in node.names)
  return {name for name in found if name in known and name != module}


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for nxt in graph[node]:
      if nxt not in index:
        visit(nxt)
        low[node] = min(low[node], low[nxt])
      elif nxt in on_stack:
        low[node] = min(low[node], index[nxt])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return out


def _without_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
  # A package's __init__ importing its own modules is not a cycle of the layers.
  return {
    name: {dep for dep in deps if not name.startswith(dep + '.') and not dep.startswith(name + '.')}
    for name, deps in graph.items()
  }


def test_no_import_cycle():
  assert _cycles(_without_packages(_graph())) == []


def test_nothing_below_the_run_store_imports_it():
  importers = {name for name, deps in _graph().items() if 'jaxunlearn.runs' in deps}
  assert importers <= ABOVE_RUNS, importers - ABOVE_RUNS


def test_the_library_imports_no_binary():
  for path in _modules().values():
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      names = (
        [alias.name for alias in node.names]
        if isinstance(node, ast.Import)
        else [node.module or '']
        if isinstance(node, ast.ImportFrom)
        else []
      )
      assert not any(n == 'experiments' or n.startswith('experiments.') for n in names), path


def test_the_cycle_check_finds_a_cycle():
  assert _cycles({'a': {'b'}, 'b': {'a'}, 'c': set()}) == [['a', 'b']]
