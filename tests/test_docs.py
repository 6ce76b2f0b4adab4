"""The README and docs/ say only what exists: every relative link resolves, every `make` target
they name is in the Makefile, every `python -m` module and `configs/` file they name exists."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def page_id(p: Path) -> str:
    return p.relative_to(REPO).as_posix()


def test_the_readme_is_a_front_door():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move reference material to docs/"
    assert "make test" in "\n".join(lines)  # .ci/run calls the README's test command


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_resolve(page):
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://|mailto:|#", target):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{page_id(page)} links to missing files: {broken}"


def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([\w-]+):", text, flags=re.M))


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_named_make_targets_modules_and_configs_exist(page):
    text = page.read_text(encoding="utf-8")
    targets = make_targets()
    missing = sorted({t for t in re.findall(r"(?:^|`)make ([a-z][\w-]*)", text, flags=re.M) if t not in targets})
    modules = sorted(set(re.findall(r"python -m ((?:simsc|pipeline|bench|experiments)[\w.]*)", text)))
    no_module = [m for m in modules if importlib.util.find_spec(m.rstrip(".")) is None]
    configs = set(re.findall(r"\b(configs/[\w/.-]+\.yaml)\b", text))
    no_config = sorted(c for c in configs if "<" not in c and not (REPO / c).is_file())
    assert not missing, f"{page_id(page)} names make targets the Makefile lacks: {missing}"
    assert not no_module, f"{page_id(page)} names modules that do not exist: {no_module}"
    assert not no_config, f"{page_id(page)} names config files that do not exist: {no_config}"
