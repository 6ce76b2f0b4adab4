"""Write each DVC stage's code ``deps`` from the code itself: ``python -m pipeline.dvc_deps``.

A stage's command is ``python -m pipeline.stage_<name>``; the code it runs is the transitive
import closure of that module inside ``simsc/`` and ``pipeline/``, computed with :mod:`ast`:
``import x``, ``from x import y`` (``y`` a submodule, or a name of a lazy package's ``_LAZY``
table), relative imports, and imports anywhere (inside functions too, since the stages import
lazily); every package on the way contributes its ``__init__.py``.

Each stage's ``params:`` list is written from the one table of the keys the stages read,
:data:`pipeline.stage_common.STAGE_PARAMS` (read with :mod:`ast`, like the imports).

``dvc.yaml`` keeps its hand-written parts (data deps, outs, comments); only the list under each
``# code: the import closure of ...`` marker and each stage's ``params:`` list are rewritten. A
package folder whose files all belong to the closure is listed as the folder. ``--check`` writes
nothing and exits 1 when the file is stale (the test suite runs it), so the lists can never drift
from the code.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from simsc._lazy import lazy_homes

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("simsc", "pipeline")
MARKER = re.compile(r"^(?P<indent>\s*)# code: the import closure of (?P<module>\S+)\.py\b.*$")
COMMENT = "# code: the import closure of {path} (written by `make dvc-deps`)"
PARAMS_TABLE = "pipeline/stage_common.py"  # its STAGE_PARAMS
STAGE = re.compile(r"^  (?P<name>[\w-]+):")  # a stage under the top-level stages:
PARAMS = re.compile(r"^(?P<indent>\s+)params:\s*$")


def module_file(name: str, repo: Path = REPO) -> Path | None:
    """The file of module ``name`` inside the project's packages, or None."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = repo.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def module_name(path: Path, repo: Path = REPO) -> str:
    """The dotted module name of a project file."""
    rel = path.relative_to(repo).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def literal(path: Path, name: str) -> Any:
    """The literal value a module assigns to the top-level ``name`` (without importing it), or None."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return ast.literal_eval(node.value)
    return None


def lazy_names(package: str, repo: Path = REPO) -> dict[str, str]:
    """A package's lazy names: name -> the submodule it is imported from on first use (PEP 562),
    from its ``_LAZY`` table (submodule -> names)."""
    f = module_file(package, repo)
    if f is None or f.name != "__init__.py":
        return {}
    return lazy_homes(literal(f, "_LAZY") or {})


def stage_params(repo: Path = REPO) -> dict[str, tuple[str, ...]]:
    """:data:`pipeline.stage_common.STAGE_PARAMS` of the checkout at ``repo``."""
    table = literal(repo / PARAMS_TABLE, "STAGE_PARAMS")
    if not isinstance(table, dict):
        raise SystemExit(f"error: {PARAMS_TABLE}: no STAGE_PARAMS table (stage -> params.yaml keys)")
    return table


def imported_modules(path: Path, repo: Path = REPO) -> set[str]:
    """Every project module that ``path`` imports, with the packages it passes through."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module_name(path, repo)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names.add(alias.name)
                # `import pkg` can reach any name of a lazy package as an attribute
                names.update(f"{alias.name}.{m}" for m in lazy_names(alias.name, repo).values())
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            lazy = lazy_names(base, repo)
            for alias in node.names:
                names.add(f"{base}.{alias.name}")  # a submodule, if it is one
                if alias.name in lazy:  # a name a lazy package imports on first use
                    names.add(f"{base}.{lazy[alias.name]}")
                elif alias.name == "*":
                    names.update(f"{base}.{m}" for m in lazy.values())
    out = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # import a.b.c runs a/__init__, a/b/__init__, ...
            out.add(".".join(parts[:i]))
    return {n for n in out if module_file(n, repo) is not None}


def closure(entry: str, repo: Path = REPO) -> set[str]:
    """The project files (repo-relative, POSIX) that ``python -m entry`` can import."""
    seen: set[Path] = set()
    todo = [entry, *(".".join(entry.split(".")[:i]) for i in range(1, entry.count(".") + 1))]
    while todo:
        f = module_file(todo.pop(), repo)
        if f is None or f in seen:
            continue
        seen.add(f)
        todo.extend(imported_modules(f, repo))
    return {f.relative_to(repo).as_posix() for f in seen}


def _package_files(folder: Path) -> list[Path] | None:
    """The files a folder dep would cover (bytecode aside: ``.dvcignore`` drops it), or None when
    the folder holds anything but Python source, which would make the folder a wider dep."""
    files = [p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    return files if all(p.suffix == ".py" for p in files) else None


def code_deps(entry: str, repo: Path = REPO) -> list[str]:
    """The sorted deps list of a stage: its closure, a fully covered sub-package as its folder."""
    files = closure(entry, repo)
    folders: set[str] = set()
    for f in sorted(files):
        parts = f.split("/")
        # the deepest-first search would split a folder; look from the top so the widest wins
        for i in range(2, len(parts)):
            folder = "/".join(parts[:i])
            if any(folder.startswith(x + "/") or folder == x for x in folders):
                break
            content = _package_files(repo / folder)
            if content and all(p.relative_to(repo).as_posix() in files for p in content):
                folders.add(folder)
                break
    listed = {f for f in files if not any(f.startswith(d + "/") for d in folders)} | folders
    return sorted(listed)


def render(text: str, repo: Path = REPO) -> str:
    """``dvc.yaml``'s text with every marked code list rewritten from the imports, and each
    stage's params list from :func:`stage_params`."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    found = 0
    table = stage_params(repo)
    in_stages, stage, written = False, None, set()
    while i < len(lines):
        if re.match(r"\S", lines[i]):  # a top-level key
            in_stages, stage = lines[i].rstrip() == "stages:", None
        elif in_stages and (s := STAGE.match(lines[i])):
            stage = s["name"]
        p = PARAMS.match(lines[i])
        if p and stage in table:
            out.append(lines[i])
            i += 1
            bullet = f"{p['indent']}  - "
            while i < len(lines) and lines[i].startswith(bullet):
                i += 1  # the old list, replaced below
            out.extend(bullet + key for key in table[stage])
            written.add(stage)
            continue
        m = MARKER.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        found += 1
        indent, path = m["indent"], m["module"] + ".py"
        entry = path.replace("/", ".")[: -len(".py")]
        if module_file(entry, repo) is None:
            raise SystemExit(f"error: dvc.yaml line {i + 1}: {path} is not a module of simsc/ or pipeline/")
        out.append(indent + COMMENT.format(path=path))
        i += 1
        item = re.compile(rf"^{re.escape(indent)}- (?:{'|'.join(PACKAGES)})/\S*$")
        while i < len(lines) and item.match(lines[i]):
            i += 1  # the old list, replaced below
        out.extend(f"{indent}- {d}" for d in code_deps(entry, repo))
    if not found:
        raise SystemExit("error: dvc.yaml has no '# code: the import closure of <module>.py' marker")
    if set(table) - written:
        raise SystemExit(f"error: dvc.yaml: no params: list for stages {sorted(set(table) - written)} of STAGE_PARAMS")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with ``--check``, verify) the code deps of ``dvc.yaml``."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.dvc_deps", description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=REPO / "dvc.yaml", help="the dvc.yaml to rewrite")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the file is stale")
    args = parser.parse_args(argv)
    old = args.file.read_text(encoding="utf-8")
    new = render(old, args.file.resolve().parent)
    if args.check:
        if old != new:
            print(f"{args.file}: code deps are stale; run `make dvc-deps`", file=sys.stderr)
            return 1
        return 0
    if old != new:
        fd, tmp = tempfile.mkstemp(dir=args.file.parent, prefix=".dvc.yaml.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new)
        os.replace(tmp, args.file)
        print(f"{args.file}: code deps rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
