"""The lazy packages (PEP 562): each ``_LAZY`` table (submodule -> names) gives the package's
attributes and ``__all__``, and ``pipeline.dvc_deps`` reads the same table from the source."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from pipeline.dvc_deps import lazy_names
from simsc._lazy import lazy_homes

PACKAGES = ("simsc", "simsc.data", "simsc.data.download", "simsc.engine", "pipeline.tracking")


@pytest.mark.parametrize("package", PACKAGES)
def test_a_lazy_package_exports_every_name_of_its_table_from_its_submodule(package):
    mod = importlib.import_module(package)
    homes = lazy_homes(mod._LAZY)
    assert mod.__all__ == sorted(homes)
    assert lazy_names(package) == homes  # what the DVC deps are computed from
    for name, sub in homes.items():
        assert getattr(mod, name) is getattr(importlib.import_module(f"{package}.{sub}"), name)
        assert name in dir(mod)
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'no_such_name'"):
        mod.no_such_name  # noqa: B018


def test_a_name_listed_under_two_submodules_is_an_error():
    with pytest.raises(ValueError, match="lazy name 'x' listed under both 'a' and 'b'"):
        lazy_homes({"a": ("x", "y"), "b": ("x",)})


def test_an_export_named_as_its_submodule_stays_the_export_after_the_submodule_is_imported():
    """``from simsc import pck`` is the function even when ``simsc.pck`` was imported first
    (``simsc.evaluate`` does): the import system binds a loaded submodule on its package."""
    code = (
        "import sys, simsc.evaluate\n"
        "from simsc import pck\n"
        "import simsc\n"
        "assert pck is sys.modules['simsc.pck'].pck and simsc.pck is pck, pck\n"
        "from simsc.pck import theta_img\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
