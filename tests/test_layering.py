"""The layering of the code base, read from the source with ``ast`` (every import statement, at
module level or inside a function, and ``importlib.import_module`` / ``__import__`` with a literal
name):

- ``policies`` imports only the standard library (and itself), and importing it loads nothing else;
- ``sim`` never imports ``adapters``;
- inside ``sim``, ``errors`` is below everything, then config < quality < engine < costs < run <
  sweep < report = testing < api < cli: a module imports only from its own sub-package or from one
  of a lower rank;
- inside ``adapters``: kv < model < decoding < torch_backend < ort_backend < calibration < commands;
- no import cycle among the modules of ``sim`` and ``adapters`` (an import under
  ``if TYPE_CHECKING:`` never runs and closes no cycle; the layers count it all the same);
- no module imports another module's ``_private`` name (``from x import _y``, or ``x._y`` through
  an imported module).

Each failure lists every offending module with the file, line and import statement."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

FIRST_PARTY = ("sim", "adapters", "policies")

# Rank of each sub-package (or top-level module); a module may import its own sub-package or a
# lower rank.  The package's own __init__.py runs before any of its modules: it is the bottom.
SIM_LAYERS = {"errors": 0, "config": 1, "quality": 2, "engine": 3, "costs": 4, "run": 5,
              "sweep": 6, "report": 7, "testing": 7, "api": 8, "cli": 9}
ADAPTERS_LAYERS = {"kv": 0, "model": 1, "decoding": 2, "torch_backend": 3, "ort_backend": 4,
                   "calibration": 5, "commands": 6, "serving": 6}
LAYERS = {"sim": SIM_LAYERS, "adapters": ADAPTERS_LAYERS}
PACKAGE_INIT = "(package)"  # the layer of sim/__init__.py and adapters/__init__.py


# -- the import walker ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Import:
    """One module imported by one statement: ``target`` is the dotted module name (a submodule
    when ``from package import submodule``), ``names`` what a from-import takes from it."""

    importer: str
    path: Path
    line: int
    statement: str
    target: str
    names: tuple[str, ...] = ()
    in_function: bool = False
    type_checking: bool = False  # under ``if TYPE_CHECKING:``: never runs

    def where(self, root: Path) -> str:
        kind = "in a function" if self.in_function else "module level"
        if self.type_checking:
            kind += ", under TYPE_CHECKING"
        return f"{self.path.relative_to(root)}:{self.line} ({kind})"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, importer: str, known: frozenset[str] = frozenset()) -> list[Import]:
    """Every import in ``path`` (the module ``importer``); ``known`` are the module names that a
    ``from package import name`` may name as a submodule."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node

    def in_function(node: ast.AST) -> bool:
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                return True
        return False

    def type_checking(node: ast.AST) -> bool:
        while node in parents:
            child, node = node, parents[node]
            if isinstance(node, ast.If) and child in node.body and "TYPE_CHECKING" in {
                    getattr(node.test, "id", None), getattr(node.test, "attr", None)}:
                return True
        return False

    out: list[Import] = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom, ast.Call)):
            continue
        common = dict(importer=importer, path=path, line=node.lineno,
                      in_function=in_function(node), type_checking=type_checking(node))
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append(Import(statement=f"import {alias.name}", target=alias.name, **common))
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, importer, is_package)
            statement = ast.unparse(node)
            plain = tuple(a.name for a in node.names if f"{module}.{a.name}" not in known)
            if plain:
                out.append(Import(statement=statement, target=module, names=plain, **common))
            for alias in node.names:
                if f"{module}.{alias.name}" in known:
                    out.append(Import(statement=statement, target=f"{module}.{alias.name}",
                                      names=(alias.name,), **common))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                out.append(Import(statement=ast.unparse(node), target=node.args[0].value,
                                  **common))
    return out


def imported_modules(path: Path, importer: str = "") -> set[str]:
    """Top-level names of the modules a file imports (a relative import counts as its package)."""
    importer = importer or f"{path.parent.name}.{path.stem}"
    return {i.target.split(".")[0] for i in imports_of(path, importer)}


@dataclass(frozen=True)
class Graph:
    root: Path
    modules: dict[str, Path]  # every module of sim, adapters and policies
    imports: list[Import]

    def of(self, top: str) -> Iterator[Import]:
        return (i for i in self.imports if i.importer.split(".")[0] == top)


@pytest.fixture(scope="session")
def graph(repo_root) -> Graph:
    modules = {module_name(p, repo_root): p for top in FIRST_PARTY
               for p in sorted((repo_root / top).rglob("*.py"))}
    known = frozenset(modules)
    imports = [i for name, path in modules.items() for i in imports_of(path, name, known)]
    return Graph(repo_root, modules, imports)


def layer(module: str) -> str:
    """The sub-package (or top-level module) of ``module`` inside its top-level package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PACKAGE_INIT


def rank(module: str) -> int:
    name = layer(module)
    return -1 if name == PACKAGE_INIT else LAYERS[module.split(".")[0]][name]


def report(title: str, lines: list[str]) -> str:
    return f"{title} ({len(lines)}):\n  " + "\n  ".join(lines)


# -- the walker itself ----------------------------------------------------------------------------
def test_the_import_walker_sees_imports(repo_root):
    # guards the tests below against an empty walk
    assert {"dataclasses", "typing", "policies", "__future__"} <= imported_modules(
        repo_root / "policies" / "tiering.py", "policies.tiering")
    assert {"numpy", "policies"} <= imported_modules(
        repo_root / "sim" / "engine" / "kv_store.py", "sim.engine.kv_store")


def test_the_import_walker_sees_relative_and_dynamic_imports(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("from . import x\nimport importlib\n"
                              "importlib.import_module('adapters.torch')\n__import__('yaml')\n")
    assert imported_modules(pkg / "m.py") == {"pkg", "importlib", "adapters", "yaml"}


def test_the_import_walker_resolves_submodules_and_sees_imports_in_functions(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for name in ("__init__", "a", "sub/__init__", "sub/b"):
        (pkg / f"{name}.py").write_text("")
    (pkg / "sub" / "c.py").write_text(
        "from .. import a\nfrom pkg.sub import b, VALUE\n\n"
        "def f():\n    from .b import _private\n    import json\n\n"
        "if TYPE_CHECKING:\n    import pkg.sub\nelse:\n    import os\n")
    known = frozenset({"pkg", "pkg.a", "pkg.sub", "pkg.sub.b", "pkg.sub.c"})
    found = {(i.target, i.names, i.in_function, i.type_checking, i.line)
             for i in imports_of(pkg / "sub" / "c.py", "pkg.sub.c", known)}
    assert found == {("pkg.a", ("a",), False, False, 1), ("pkg.sub.b", ("b",), False, False, 2),
                     ("pkg.sub", ("VALUE",), False, False, 2),
                     ("pkg.sub.b", ("_private",), True, False, 5), ("json", (), True, False, 6),
                     ("pkg.sub", (), False, True, 9), ("os", (), False, False, 11)}


def test_every_sub_package_has_a_layer(graph):
    """The tables above name exactly the sub-packages (and top-level modules) that exist."""
    for top, table in LAYERS.items():
        present = {layer(m) for m in graph.modules if m.split(".")[0] == top} - {PACKAGE_INIT}
        assert present == set(table), (
            f"{top}: layers without a rank: {sorted(present - set(table))}; ranked but gone: "
            f"{sorted(set(table) - present)}")


# -- policies -------------------------------------------------------------------------------------
def test_policies_import_only_the_standard_library(graph):
    assert sum(1 for m in graph.modules if m.startswith("policies.")) >= 5
    bad = [f"{i.where(graph.root)}: {i.importer} -> {i.statement}" for i in graph.of("policies")
           if i.target.split(".")[0] not in sys.stdlib_module_names
           and i.target.split(".")[0] != "policies"]
    assert not bad, report("policies imports beyond the standard library", bad)


def test_importing_policies_loads_no_third_party_or_engine_module(repo_root):
    code = ("import sys, policies\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('numpy', 'simpy', 'pydantic', 'torch', 'sim', 'adapters', 'yaml')))\n"
            "print('policies' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    assert out[:2] == ["[]", "True"]


# -- sim and adapters -----------------------------------------------------------------------------
def test_sim_never_imports_adapters(graph):
    assert sum(1 for m in graph.modules if m.startswith("sim.")) >= 10
    bad = [f"{i.where(graph.root)}: {i.importer} -> {i.statement}" for i in graph.of("sim")
           if i.target.split(".")[0] == "adapters"]
    assert not bad, report("sim imports adapters", bad)


def _layer_violations(graph: Graph, top: str) -> list[str]:
    bad = []
    for i in graph.of(top):
        if i.target.split(".")[0] != top:
            continue
        own, theirs = layer(i.importer), layer(i.target)
        if theirs not in LAYERS[top] and theirs != PACKAGE_INIT:
            bad.append(f"{i.where(graph.root)}: {i.importer} -> {i.statement} "
                       f"(no such layer: {theirs})")
        elif own != theirs and rank(i.target) >= rank(i.importer):
            bad.append(f"{i.where(graph.root)}: {i.importer} [{own}, rank {rank(i.importer)}] "
                       f"-> {i.statement} [{theirs}, rank {rank(i.target)}]")
    return bad


def test_sim_layers_import_only_downwards(graph):
    """errors < config < quality < engine < costs < run < sweep < report = testing < api < cli."""
    bad = _layer_violations(graph, "sim")
    assert not bad, report("sim imports against its layers", bad)


def test_adapters_layers_import_only_downwards(graph):
    """kv < model < decoding < torch_backend < ort_backend < calibration < commands."""
    bad = _layer_violations(graph, "adapters")
    assert not bad, report("adapters imports against its layers", bad)


def test_the_layer_check_flags_upward_and_sideways_imports(tmp_path):
    def imp(importer: str, target: str) -> Import:
        return Import(importer, tmp_path / "m.py", 1, f"import {target}", target)

    fake = Graph(tmp_path, {}, [imp("sim.engine.planner", "sim.costs.cost_model"),  # up
                                imp("sim.testing.simulator", "sim.report.page"),  # sideways
                                imp("sim.report.sweep", "sim.sweep.run"),  # down: fine
                                imp("sim.engine.planner", "sim.engine.state"),  # own: fine
                                imp("sim.cli.app", "sim"),  # the package: fine
                                imp("sim.errors", "policies")])  # not sim: not this check
    bad = _layer_violations(fake, "sim")
    assert len(bad) == 2
    assert "sim.engine.planner [engine, rank 3] -> import sim.costs.cost_model [costs" in bad[0]
    assert "sim.testing.simulator [testing, rank 7] -> import sim.report.page [report" in bad[1]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_cycles():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "d"}, "e": set()}
    assert _cycles(edges) == [["a", "b", "c"]]


def test_no_import_cycles(graph):
    """Module-level and function-level imports both count; those under ``if TYPE_CHECKING:``
    (for annotations only) never run, so they cannot close a cycle."""
    inner = [i for i in graph.imports if i.importer.split(".")[0] in ("sim", "adapters")
             and i.target in graph.modules and i.target != i.importer and not i.type_checking]
    edges: dict[str, set[str]] = {}
    for i in inner:
        edges.setdefault(i.importer, set()).add(i.target)
    bad = []
    for component in _cycles(edges):
        members = set(component)
        bad.append("cycle " + " <-> ".join(component) + ":\n    " + "\n    ".join(
            f"{i.where(graph.root)}: {i.importer} -> {i.statement}" for i in inner
            if i.importer in members and i.target in members))
    assert not bad, report("import cycles", bad)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_attributes(graph: Graph, path: Path, importer: str) -> list[str]:
    """``alias._name`` where ``alias`` is bound to another first-party module by an import."""
    tree = ast.parse(path.read_text(), filename=str(path))
    bound: dict[str, str] = {}  # local name -> the module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name if alias.asname else alias.name.split(".")[0]
                bound[alias.asname or name] = name
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, importer, path.name == "__init__.py")
            for alias in node.names:
                if f"{module}.{alias.name}" in graph.modules:
                    bound[alias.asname or alias.name] = f"{module}.{alias.name}"
    bad = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _private(node.attr)):
            continue
        chain, value = [], node.value
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if not isinstance(value, ast.Name) or value.id not in bound:
            continue
        module = ".".join([bound[value.id], *reversed(chain)])
        if module in graph.modules and module != importer:
            bad.append(f"{path.relative_to(graph.root)}:{node.lineno}: {importer} uses "
                       f"{module}.{node.attr} (`{ast.unparse(node)}`)")
    return bad


def test_no_module_imports_another_modules_private_names(graph):
    bad = [f"{i.where(graph.root)}: {i.importer} -> {i.statement} "
           f"(private: {', '.join(n for n in i.names if _private(n))})"
           for i in graph.imports
           if i.target.split(".")[0] in FIRST_PARTY and i.target != i.importer
           and any(_private(n) for n in i.names)]
    for name, path in graph.modules.items():
        bad += _private_attributes(graph, path, name)
    assert not bad, report("imports of another module's private names", bad)
