"""The structure of ``simsc``'s imports: no cycles, and a CLI that needs no model does not
import torch (structural checks; the timings live in bench/)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

# module <-> file and the packages' lazy tables, read the way the DVC deps test reads them
from test_dvc_deps import lazy_names as lazy_table
from test_dvc_deps import module_file
from test_dvc_deps import module_name as module_of

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "simsc"


def edges(path: Path) -> set[str]:
    """The ``simsc`` modules ``path`` imports, anywhere in the file (function-level imports
    too): ``from pkg import name`` points at the submodule ``name`` if it is one, at the module
    a lazy package table names for it, else at ``pkg`` itself. The implicit import of parent
    packages is left out: a package importing its own submodule is not a cycle."""
    here = module_of(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            lazy = lazy_table(base)
            for a in node.names:
                if module_file(f"{base}.{a.name}") is not None:
                    out.add(f"{base}.{a.name}")
                elif a.name in lazy:
                    out.add(f"{base}.{lazy[a.name]}")
                else:
                    out.add(base)
    return {m for m in out if m.split(".")[0] == PACKAGE and module_file(m) is not None and m != here}


def graph() -> dict[str, set[str]]:
    return {module_of(p): edges(p) for p in sorted((REPO / PACKAGE).rglob("*.py"))}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``g`` as a path ``[a, b, ..., a]``, or None (iterative DFS, three colours)."""
    colour = dict.fromkeys(g, 0)
    for start in sorted(g):
        if colour[start]:
            continue
        stack = [(start, iter(sorted(g[start])))]
        path = [start]
        colour[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour.get(nxt, 2) == 1:
                return path[path.index(nxt):] + [nxt]
            elif colour.get(nxt) == 0:
                colour[nxt] = 1
                stack.append((nxt, iter(sorted(g[nxt]))))
                path.append(nxt)
    return None


def test_the_cycle_finder_finds_a_cycle_behind_a_function_level_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    src = "def f():\n    from simsc.data.cache import CachedImages\n"
    p = REPO / "simsc" / "data" / "_probe_not_a_module.py"
    try:
        p.write_text(src)
        assert "simsc.data.cache" in edges(p)
    finally:
        p.unlink()


def test_simsc_has_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_help_and_the_data_package_do_not_import_torch():
    help_run = _modules_after("import contextlib, simsc.cli\nwith contextlib.suppress(SystemExit):\n"
                              "    simsc.cli.main(['--help'])")
    assert "simsc.cli" in help_run and "torch" not in help_run and "numpy" not in help_run
    for cmd in ("train", "evaluate", "match", "download"):
        sub = _modules_after(f"import contextlib, simsc.cli\nwith contextlib.suppress(SystemExit):\n"
                             f"    simsc.cli.main(['{cmd}', '--help'])")
        assert "torch" not in sub, cmd
        # nor the downloader's HTTP, TLS and archive modules (simsc.data.download is lazy)
        assert not {"http.client", "ssl", "tarfile", "zipfile"} & sub, cmd
    plain = _modules_after("import simsc.data, simsc.data.annotations, simsc.data.index, simsc.data.sources")
    assert "torch" not in plain and "simsc.data.records" not in plain
