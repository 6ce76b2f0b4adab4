"""The loaders' splits and split aliases, checked once by PairDataset with each loader's message."""

from __future__ import annotations

import re

import pytest

from simsc.data import DatasetFormatError, PFPascalDataset, PFWillowDataset, SPairDataset


@pytest.mark.parametrize(
    ("cls", "split", "message"),
    [
        (PFPascalDataset, "bogus", "PF-Pascal split must be one of ['test', 'trn', 'val'], got 'bogus'"),
        (PFWillowDataset, "trn", "PF-Willow only has a 'test' split, got 'trn'"),
        (SPairDataset, "eval", "SPair-71k split must be one of ['trn', 'val', 'test'], got 'eval'"),
    ],
)
def test_an_unknown_split_names_the_data_set_and_its_splits(tmp_path, cls, split, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        cls(tmp_path, split)


@pytest.mark.parametrize(
    ("cls", "split"),
    [(PFPascalDataset, "train"), (PFPascalDataset, "eval"), (SPairDataset, "validation"), (PFWillowDataset, "test")],
)
def test_a_known_split_or_alias_passes_the_check(tmp_path, cls, split):
    # past the split check, the constructor looks for the data: a missing root is the next error
    with pytest.raises(DatasetFormatError, match="dataset root folder not found"):
        cls(tmp_path / "missing", split)
