"""The package files a rule's script imports, followed through the kvreuse package: inputs of the
aggregation, figure and write-up rules, so that editing a table, figure or write-up module makes
what it built stale. Snakemake tracks a rule's ``script:`` file, not the modules that file
imports, so before this a changed ``kvreuse/tables_*.py`` left its table, figures and write-up as
they were. The measurement rules take none on purpose: a code change must not rerun a GPU run
(a run is current by its config hash, kvreuse.freshness).

Imports are read from the source (:mod:`ast`), every one, those inside functions too, so the
closure errs on the side of more files: a change to a module a table never calls reruns the
tables (seconds of pandas), never the measurements.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

#: the package, relative to the repository root
PACKAGE = "workflow/kvreuse"


def _module_file(root: Path, dotted: str) -> list[Path]:
    """The file of module ``dotted`` (kvreuse.x.y) under ``root`` (the folder holding kvreuse),
    with the ``__init__.py`` of each package on the way."""
    parts = dotted.split(".")
    out = [root.joinpath(*parts[:i], "__init__.py") for i in range(1, len(parts) + 1)]
    out.append(root.joinpath(*parts).with_suffix(".py"))
    return [p for p in out if p.is_file()]


def _imports(path: Path, root: Path) -> set[Path]:
    """The kvreuse files ``path`` imports directly (absolute and relative imports)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = path.relative_to(root).parent.parts if path.is_relative_to(root) else ()
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the file's own package up
                base = list(package[:len(package) - node.level + 1])
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.append(module)
            names += [f"{module}.{a.name}" for a in node.names]  # a submodule imported by name
    found: set[Path] = set()
    for name in names:
        if name == "kvreuse" or name.startswith("kvreuse."):
            found.update(_module_file(root, name))
    return found


@functools.lru_cache(maxsize=None)
def imported_files(script: str, repo: str = ".") -> tuple[str, ...]:
    """The kvreuse files ``script`` (a path relative to ``repo``) imports, directly or through
    the modules it imports, sorted, as paths relative to ``repo``."""
    repo_path = Path(repo)
    root = repo_path / Path(PACKAGE).parent
    seen: set[Path] = set()
    todo = list(_imports(repo_path / script, root))
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += _imports(path, root) - seen
    return tuple(sorted(str(p.relative_to(repo_path)) for p in seen))
