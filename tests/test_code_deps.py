"""kvreuse.code_deps: the package files a rule's script imports, followed through the package
(absolute, relative and in-function imports, cycles), as the analysis rules' inputs."""

from __future__ import annotations

from pathlib import Path

from kvreuse import code_deps

REPO = Path(__file__).resolve().parents[1]


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_imports_are_followed_through_the_package(tmp_path):
    write(tmp_path, {
        "workflow/scripts/make.py": "import json\nfrom kvreuse import a\n",
        "workflow/kvreuse/__init__.py": "",
        "workflow/kvreuse/a.py": "from . import b\nfrom .sub.c import thing\n",
        "workflow/kvreuse/b.py": "def f():\n    from kvreuse import a  # a cycle, inside a function\n"
                                 "    import kvreuse.d\n",
        "workflow/kvreuse/d.py": "",
        "workflow/kvreuse/sub/__init__.py": "",
        "workflow/kvreuse/sub/c.py": "from ..e import x\n",
        "workflow/kvreuse/e.py": "",
        "workflow/kvreuse/unused.py": "",
    })
    files = code_deps.imported_files("workflow/scripts/make.py", str(tmp_path))
    assert files == tuple(f"workflow/kvreuse/{f}" for f in
                          ("__init__.py", "a.py", "b.py", "d.py", "e.py", "sub/__init__.py", "sub/c.py"))


def test_the_analysis_scripts_depend_on_their_modules_and_the_figures_on_less():
    table = code_deps.imported_files("workflow/scripts/aggregate.py", str(REPO))
    assert {"workflow/kvreuse/tables_overhead.py", "workflow/kvreuse/stats.py"} <= set(table)
    figure = code_deps.imported_files("workflow/scripts/figures/restart.py", str(REPO))
    assert "workflow/kvreuse/plotting.py" in figure and "workflow/kvreuse/tables_overhead.py" not in figure
    assert all((REPO / f).is_file() for f in table + figure)
