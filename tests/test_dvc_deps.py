"""``dvc.yaml`` cannot go stale: each stage's ``deps`` and ``params`` are checked against the code.

**Code deps.** :mod:`pipeline.dvc_deps` writes each stage's code deps (the import closure of
its module inside ``simsc/`` and ``pipeline/``) into ``dvc.yaml``; the file must be what it
writes (``make dvc-deps``). Independently of that rendering, each file of the closure must be
listed in the stage's ``deps`` (a listed directory covers the files under it), and each listed
``.py`` file must be in the closure (no dep that cannot change the stage's output).

**Params.** The keys each stage reads have one home, the table
:data:`pipeline.stage_common.STAGE_PARAMS`; each stage module's ``PARAMS`` is its entry, and
:func:`pipeline.stage_common.run_stage` hands the stage only those keys: the code cannot read
a key outside ``PARAMS`` (it would find nothing). Two checks make the table honest: it is the
stages' ``params:`` in ``dvc.yaml`` (which ``make dvc-deps`` writes from it), and every declared
key is read somewhere in the stage's ``pipeline/`` code (its last component appears as a string
constant or subscript there), so a key the stage never reads cannot stay declared. A constant rather than
an analysis of ``params[...]`` expressions, because the reads go through helpers
(``_section``, ``engine_config``, ``build_report``) that an expression analysis would have to
follow and still miss; the constant is what the code itself uses.
"""

from __future__ import annotations

import ast
import importlib
import re
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.dvc_deps import PACKAGES, REPO, closure
from pipeline.dvc_deps import main as dvc_deps_main
from pipeline.stage_common import STAGE_PARAMS


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


def test_dvc_yaml_is_what_make_dvc_deps_writes(capsys):
    assert dvc_deps_main(["--check"]) == 0, capsys.readouterr().err


def test_a_new_import_makes_the_file_stale_and_the_command_repairs_it(tmp_path):
    """A copy of the project where the report stage gains an import: --check fails, a rewrite
    lists the new module, keeps every hand-written line, and --check passes again."""
    for name in ("simsc", "pipeline"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "pipeline" / "extra_table.py").write_text("X = 1\n")
    stage = tmp_path / "pipeline" / "stage_report.py"
    stage.write_text(stage.read_text() + "\nfrom pipeline import extra_table  # noqa: E402,F401\n")
    yaml_file = tmp_path / "dvc.yaml"
    before = yaml_file.read_text()
    assert dvc_deps_main(["--check", "--file", str(yaml_file)]) == 1
    assert dvc_deps_main(["--file", str(yaml_file)]) == 0
    after = yaml_file.read_text()
    report = yaml.safe_load(after)["stages"]["report"]["deps"]
    assert "pipeline/extra_table.py" in report
    # every line but the code lists and their marker comments is kept as it was
    kept = [ln for ln in before.splitlines() if not re.match(r"\s*(- (simsc|pipeline)/|# code:)", ln)]
    assert kept == [ln for ln in after.splitlines() if not re.match(r"\s*(- (simsc|pipeline)/|# code:)", ln)]
    assert dvc_deps_main(["--check", "--file", str(yaml_file)]) == 0


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
    assert declared == list(STAGE_PARAMS[name]), f"dvc.yaml stage {name!r} params {declared} != STAGE_PARAMS"
    assert module.PARAMS == STAGE_PARAMS[name], f"{module.__name__}.PARAMS is not its STAGE_PARAMS entry"


def test_the_params_table_is_what_dvc_yaml_lists(tmp_path):
    """A copy of the project where the report stage's entry of the table gains a key: --check
    fails, a rewrite lists it under the report stage's params and nowhere else."""
    for name in ("simsc", "pipeline"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    table = tmp_path / "pipeline" / "stage_common.py"
    table.write_text(table.read_text().replace('"report": ("report",', '"report": ("report", "report_extra",'))
    yaml_file = tmp_path / "dvc.yaml"
    assert dvc_deps_main(["--check", "--file", str(yaml_file)]) == 1
    assert dvc_deps_main(["--file", str(yaml_file)]) == 0
    after = yaml.safe_load(yaml_file.read_text())["stages"]
    assert after["report"]["params"] == ["report", "report_extra", *STAGE_PARAMS["report"][1:]]
    assert {n: st.get("params") for n, st in after.items() if n != "report"} == {
        n: st.get("params")
        for n, st in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items()
        if n != "report"
    }


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
