"""The kvreuse package's import graph, read from the source: no cycle, errors.py imports none.

Every import counts, also one inside a function (that is how the old arms/config/lmcache_arms
cycle was hidden), relative or absolute. An edge goes to the module imported: ``from . import
x`` to ``kvreuse.x`` where x is a module, ``from .x import f`` to ``kvreuse.x``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "workflow" / "kvreuse"


def module_name(path: Path, package: Path) -> str:
    """``kvreuse.lmcache.flags`` for workflow/kvreuse/lmcache/flags.py (a package: its folder)."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(name: str, path: Path) -> list[tuple[str, int]]:
    """(module or module.name, line) for every import in the file, at any depth."""
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = here[:len(here) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            out += [(f"{base}.{a.name}", node.lineno) for a in node.names]
    return out


def import_graph(package: Path = PACKAGE) -> nx.DiGraph:
    """Modules of ``package`` and which of them each one imports (edge attribute: the line)."""
    files = {module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    g = nx.DiGraph()
    g.add_nodes_from(files)
    for name, path in files.items():
        for target, line in imports_of(name, path):
            # the module itself, else the module a name was taken from (``from .x import f``)
            mod = target if target in files else target.rpartition(".")[0]
            if mod in files and mod != name:
                g.add_edge(name, mod, line=line)
    return g


def describe(g: nx.DiGraph, cycle: list[str]) -> str:
    steps = zip(cycle, cycle[1:] + cycle[:1])
    return " -> ".join(f"{a} (line {g.edges[a, b]['line']})" for a, b in steps) + f" -> {cycle[0]}"


def test_kvreuse_has_no_import_cycle():
    g = import_graph()
    assert "kvreuse.lmcache.settings" in g and g.number_of_edges() > 10  # the graph was read
    cycles = sorted(nx.simple_cycles(g), key=len)
    assert not cycles, ("import cycles in kvreuse (move the shared names to a module both can "
                        "import, e.g. kvreuse.errors):\n" + "\n".join(describe(g, c) for c in cycles))


def test_errors_imports_nothing_of_kvreuse():
    g = import_graph()
    assert list(g.successors("kvreuse.errors")) == []


def test_lmcache_modules_take_the_plan_duck_typed():
    g = import_graph()
    users = sorted(m for m in g.predecessors("kvreuse.plan") if m.startswith("kvreuse.lmcache"))
    assert users == [], f"{users} import kvreuse.plan, which imports the lmcache package"


def test_the_graph_sees_imports_inside_functions(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import x\n    return x\n")
    g = import_graph(pkg)
    assert set(g.edges) == {("pkg.a", "pkg.sub.b"), ("pkg.sub.b", "pkg.a")}
    assert describe(g, next(iter(nx.simple_cycles(g)))) in (
        "pkg.a (line 1) -> pkg.sub.b (line 2) -> pkg.a", "pkg.sub.b (line 2) -> pkg.a (line 1) -> pkg.sub.b")
