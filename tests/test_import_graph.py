"""The structure of the imports: no cycles in ``simsc`` and ``pipeline``, no orchestration or tracking package
anywhere in the library, and a CLI that needs no model does not import torch (structural
checks; the timings live in bench/)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

# module <-> file and the packages' lazy tables, read the way the DVC deps test reads them
from pipeline.dvc_deps import lazy_names as lazy_table
from pipeline.dvc_deps import module_file
from pipeline.dvc_deps import module_name as module_of

REPO = Path(__file__).resolve().parents[1]
#: The project's packages: the import graph covers both (``pipeline`` may import ``simsc``).
PACKAGES = ("simsc", "pipeline")
LIBRARY = "simsc"


def edges(path: Path) -> set[str]:
    """The project modules (``simsc``, ``pipeline``) ``path`` imports, anywhere in the file (function-level imports
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
    return {m for m in out if m.split(".")[0] in PACKAGES and module_file(m) is not None and m != here}


def graph() -> dict[str, set[str]]:
    return {module_of(p): edges(p) for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


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
                return path[path.index(nxt) :] + [nxt]
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


def test_no_import_cycle_and_no_arrow_from_the_library_up():
    g = graph()
    assert {m.split(".")[0] for m in g} == set(PACKAGES) and len(g) > 60
    cycle = find_cycle(g)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
    up = sorted(
        f"{m} -> {d}" for m, deps in g.items() if m.startswith("simsc") for d in deps if d.startswith("pipeline")
    )
    assert up == []
    assert any(d.startswith("simsc") for m, deps in g.items() if m.startswith("pipeline") for d in deps)


#: What the library never imports, not even inside a function: the orchestration layer and the
#: tools it drives. ``simsc`` reaches a registry only through the entry points of
#: :mod:`simsc.model_uri`, which name ``pipeline`` code as data, not as an import.
FORBIDDEN = ("mlflow", "ray", "dvc", "pipeline")


def _is_dynamic_import(func: ast.expr) -> bool:
    """``__import__(...)``, ``import_module(...)`` or ``importlib.import_module(...)``."""
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def forbidden_imports(source: str, filename: str) -> list[str]:
    """``file:line: module`` for each import of a :data:`FORBIDDEN` package in ``source``:
    ``import x``, ``from x import y`` at any depth (inside functions, methods, ``try`` and
    ``if TYPE_CHECKING`` blocks too) and ``importlib.import_module`` / ``__import__`` of a
    literal name. Relative imports stay inside the library and are not counted."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        elif (
            isinstance(node, ast.Call)
            and _is_dynamic_import(node.func)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        found += [f"{filename}:{node.lineno}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    return found


def forbidden_imports_under(root: Path) -> tuple[list[Path], list[str]]:
    """The ``.py`` files under ``root`` (recursively) and their forbidden imports."""
    files = sorted(root.rglob("*.py"))
    found = []
    for path in files:
        found += forbidden_imports(path.read_text(encoding="utf-8"), path.relative_to(root.parent).as_posix())
    return files, found


def test_the_checker_finds_a_planted_lazy_import(tmp_path):
    lib = tmp_path / "lib"
    (lib / "sub").mkdir(parents=True)
    (lib / "__init__.py").write_text("")
    (lib / "sub" / "deep.py").write_text(
        "import importlib\n"  # 1
        "\n"  # 2
        "def resolve(uri):\n"  # 3
        "    from pipeline.tracking.models import fetch_checkpoint\n"  # 4
        "    return fetch_checkpoint(uri)\n"  # 5
        "\n"  # 6
        "class Logger:\n"  # 7
        "    def log(self):\n"  # 8
        "        try:\n"  # 9
        "            import mlflow.pyfunc, json\n"  # 10
        "        except ImportError:\n"  # 11
        "            pass\n"  # 12
        "\n"  # 13
        "def tune():\n"  # 14
        "    return importlib.import_module('ray.tune'), __import__('dvc')\n"  # 15
    )
    # near misses: other packages whose names start alike, a sibling module called pipeline
    (lib / "clean.py").write_text(
        "import rayon\nfrom mlflowish import x\nfrom .pipeline import y\n"
        "import importlib\nimportlib.import_module('simsc.pipelines')\n"
    )
    files, found = forbidden_imports_under(lib)
    assert len(files) == 3
    assert found == [
        "lib/sub/deep.py:4: pipeline.tracking.models",
        "lib/sub/deep.py:10: mlflow.pyfunc",
        "lib/sub/deep.py:15: ray.tune",
        "lib/sub/deep.py:15: dvc",
    ]


def test_the_library_never_imports_orchestration_or_tracking():
    files, found = forbidden_imports_under(REPO / LIBRARY)
    # the walk reaches every level (simsc/data/download/*.py): an empty glob would pass vacuously
    assert REPO / LIBRARY / "model_uri.py" in files
    assert max(len(p.relative_to(REPO / LIBRARY).parts) for p in files) >= 3
    assert not found, "simsc imports what only pipeline/ may:\n" + "\n".join(found)


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def test_help_and_the_data_package_do_not_import_torch():
    help_run = _modules_after(
        "import contextlib, simsc.cli\nwith contextlib.suppress(SystemExit):\n    simsc.cli.main(['--help'])"
    )
    assert "simsc.cli" in help_run and "torch" not in help_run and "numpy" not in help_run
    for cmd in ("train", "evaluate", "match", "download"):
        sub = _modules_after(
            f"import contextlib, simsc.cli\nwith contextlib.suppress(SystemExit):\n"
            f"    simsc.cli.main(['{cmd}', '--help'])"
        )
        assert "torch" not in sub, cmd
        # nor the downloader's HTTP, TLS and archive modules (simsc.data.download is lazy)
        assert not {"http.client", "ssl", "tarfile", "zipfile"} & sub, cmd
    plain = _modules_after("import simsc.data, simsc.data.annotations, simsc.data.index, simsc.data.sources")
    assert "torch" not in plain and "simsc.data.records" not in plain
