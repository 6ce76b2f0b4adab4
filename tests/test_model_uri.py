"""simsc.model_uri: scheme -> resolver, registered by code or by an entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from simsc import model_uri


def test_scheme():
    assert model_uri.scheme("models:/simsc-default@champion") == "models"
    assert model_uri.scheme("runs:/abc/model") == "runs"
    assert model_uri.scheme("runs/default/checkpoints/best.pt") is None
    assert model_uri.scheme("C:\\runs\\best.pt") is None  # a drive letter is not a scheme


def test_registered_resolver_is_used(monkeypatch, tmp_path):
    monkeypatch.setattr(model_uri, "_RESOLVERS", {})
    seen = []
    model_uri.register("zoo", lambda uri: seen.append(uri) or tmp_path / "best.pt")
    assert model_uri.resolve("zoo:/a@b") == tmp_path / "best.pt" and seen == ["zoo:/a@b"]


def test_unknown_scheme_says_what_provides_one(monkeypatch):
    monkeypatch.setattr(model_uri, "_RESOLVERS", {})
    with pytest.raises(model_uri.NoResolverError, match=r"no resolver for nosuchscheme: .*simsc.model_uri"):
        model_uri.resolve("nosuchscheme:/x")
    with pytest.raises(model_uri.NoResolverError, match="not a model URI"):
        model_uri.resolve("best.pt")


def test_entry_point_is_loaded(monkeypatch, tmp_path):
    """A distribution on sys.path declaring ``[simsc.model_uri] fake = mod:fn`` is found."""
    monkeypatch.setattr(model_uri, "_RESOLVERS", {})
    (tmp_path / "fake_resolver_mod.py").write_text("def fn(uri):\n    return '/resolved/' + uri.split('/')[-1]\n")
    dist = tmp_path / "fake_resolver-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-resolver\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[simsc.model_uri]\nfakescheme = fake_resolver_mod:fn\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert model_uri.resolve("fakescheme:/m/1") == Path("/resolved/1")
