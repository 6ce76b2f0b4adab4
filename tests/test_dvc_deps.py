"""``dvc.yaml`` cannot go stale: each stage's ``deps`` and ``params`` are checked against the code.

**Code deps.** A stage's command is ``python -m pipeline.stage_<name>``; its code is the
transitive import closure of that module inside ``simsc/`` and ``pipeline/``, computed here
with :mod:`ast`: ``import x``, ``from x import y`` (``y`` a submodule or a name), relative
imports, and imports anywhere (inside functions too, since the stages import lazily); every
package on the way contributes its ``__init__.py``. Each file of the closure must be listed
in the stage's ``deps`` (a listed directory covers the files under it), and each listed
``.py`` file must be in the closure (no dep that cannot change the stage's output).

**Params.** Each stage module declares the keys it reads in one constant, ``PARAMS``, and
:func:`pipeline.stage_common.run_stage` hands the stage only those keys: the code cannot read
a key outside ``PARAMS`` (it would find nothing). Two checks make ``PARAMS`` honest:
it equals the stage's ``params:`` in ``dvc.yaml``, and every declared key is read somewhere
in the stage's ``pipeline/`` code (its last component appears as a string constant or
subscript there), so a key the stage never reads cannot stay declared. A constant rather than
an analysis of ``params[...]`` expressions, because the reads go through helpers
(``_section``, ``engine_config``, ``build_report``) that an expression analysis would have to
follow and still miss; the constant is what the code itself uses.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("simsc", "pipeline")


def module_file(name: str) -> Path | None:
    """The file of module ``name`` inside the project's packages, or None."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def lazy_names(package: str) -> dict[str, str]:
    """A package's ``_LAZY`` table (name -> submodule it is imported from on first use, PEP 562)."""
    f = module_file(package)
    if f is None or f.name != "__init__.py":
        return {}
    for node in ast.parse(f.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def imported_modules(path: Path) -> set[str]:
    """Every project module that ``path`` imports, with the packages it passes through."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names.add(alias.name)
                # `import pkg` can reach any name of a lazy package as an attribute
                names.update(f"{alias.name}.{m}" for m in lazy_names(alias.name).values())
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            for alias in node.names:
                names.add(f"{base}.{alias.name}")  # a submodule, if it is one
                lazy = lazy_names(base)
                if alias.name in lazy:  # a name a lazy package imports on first use
                    names.add(f"{base}.{lazy[alias.name]}")
                elif alias.name == "*":
                    names.update(f"{base}.{m}" for m in lazy.values())
    out = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # import a.b.c runs a/__init__, a/b/__init__, ...
            out.add(".".join(parts[:i]))
    return {n for n in out if module_file(n) is not None}


def closure(entry: str) -> set[str]:
    """The project files (repo-relative) that ``python -m entry`` can import."""
    seen: set[Path] = set()
    todo = [m for m in {entry, *[".".join(entry.split(".")[:i]) for i in range(1, entry.count(".") + 1)]}]
    while todo:
        f = module_file(todo.pop())
        if f is None or f in seen:
            continue
        seen.add(f)
        todo.extend(imported_modules(f))
    return {f.relative_to(REPO).as_posix() for f in seen}


def stages() -> dict[str, dict]:
    """The stages of dvc.yaml (a ``foreach`` stage by its name, its ``do`` body)."""
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    return {name: (st["do"] if "foreach" in st else st) for name, st in doc["stages"].items()}


def entry_module(stage: dict) -> str:
    m = re.match(r"python -m ([\w.]+)", stage["cmd"])
    assert m, f"not a python -m command: {stage['cmd']}"
    return m.group(1)


STAGES = stages()


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def test_the_closure_follows_lazy_and_relative_imports():
    files = closure("pipeline.stage_report")
    assert {
        "pipeline/__init__.py",
        "pipeline/stage_report.py",
        "pipeline/report.py",  # from .report (lazy)
        "pipeline/tracking/results.py",
        "pipeline/stage_common.py",
        "simsc/__init__.py",
        "simsc/errors.py",
    } <= files
    assert "pipeline/stage_train.py" not in files


@pytest.mark.parametrize("name", sorted(STAGES))
def test_deps_cover_the_import_closure(name):
    stage = STAGES[name]
    deps = [str(d) for d in stage.get("deps", [])]
    files = closure(entry_module(stage))
    missing = sorted(f for f in files if not covered(f, deps))
    assert not missing, f"dvc.yaml stage {name!r} misses deps {missing}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_code_deps_are_in_the_closure(name):
    stage = STAGES[name]
    files = closure(entry_module(stage))
    extra = []
    for d in map(str, stage.get("deps", [])):
        if not d.startswith(tuple(p + "/" for p in PACKAGES)):
            continue
        if (REPO / d).is_dir():
            py = [f.relative_to(REPO).as_posix() for f in (REPO / d).rglob("*.py")]
            extra.extend(sorted(set(py) - files))
        elif d.endswith(".py") and d not in files:
            extra.append(d)
    assert not extra, f"dvc.yaml stage {name!r} lists code it never imports: {extra}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_params_are_the_ones_the_stage_reads(name):
    stage = STAGES[name]
    module = importlib.import_module(entry_module(stage))
    declared = [str(p) for p in stage.get("params", [])]
    assert sorted(declared) == sorted(module.PARAMS), (
        f"dvc.yaml stage {name!r} params {declared} != {module.__name__}.PARAMS {list(module.PARAMS)}"
    )


def strings_in(path: Path, functions: set[str] | None = None) -> set[str]:
    """String constants and attribute names in ``path`` (only in the top-level ``functions``, if
    given), leaving out the ``PARAMS`` declaration itself."""
    tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
    roots = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(x, ast.Name) and x.id == "PARAMS" for x in node.targets):
            continue
        if functions is None or (isinstance(node, ast.FunctionDef) and node.name in functions):
            roots.append(node)
    out = set()
    for root in roots:
        for node in ast.walk(root):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.add(node.value)
            elif isinstance(node, ast.Attribute):  # cfg.train.out_dir
                out.add(node.attr)
    return out


def common_helpers(module_path: Path) -> set[str]:
    """The names the stage module imports from ``pipeline.stage_common``."""
    tree = ast.parse((REPO / module_path).read_text(encoding="utf-8"))
    return {
        a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module == "pipeline.stage_common"
        for a in n.names
    }


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_declared_params_key_is_read(name):
    stage = STAGES[name]
    module = importlib.import_module(entry_module(stage))
    entry = Path(module.__file__).relative_to(REPO)
    code = [Path(f) for f in closure(module.__name__) if f.startswith("pipeline/") and f != "pipeline/stage_common.py"]
    used = set().union(*(strings_in(f) for f in code))
    used |= strings_in(Path("pipeline/stage_common.py"), common_helpers(entry))
    unread = [k for k in module.PARAMS if k.split(".")[-1] not in used]
    assert not unread, f"stage {name!r} declares params it never reads: {unread}"


def test_the_declaration_limits_what_a_stage_sees():
    from pipeline.stage_common import select

    params = {
        "data": {"dataset": "embedded", "root": "r", "resolution": 64},
        "train": {"lr": 1},
        "embedded": {"seed": 0},
    }
    assert select(params, ("data.dataset", "data.root", "embedded")) == {
        "data": {"dataset": "embedded", "root": "r"},
        "embedded": {"seed": 0},
    }
    assert select({"tracking": "yes"}, ("tracking",)) == {"tracking": "yes"}
