import os

import pytest
import torch

# Two cores: keep torch from oversubscribing when pytest and helpers share the machine.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_embedded(tmp_path_factory):
    """A small embedded data set (8/4/4 pairs of about 100 px) shared by the engine and CLI tests."""
    from simsc.data.embedded import build_embedded_dataset

    root = tmp_path_factory.getbasetemp() / "embedded-tiny"
    return build_embedded_dataset(root, n_train=8, n_val=4, n_test=4, progress=False, image_size=((96, 72), (128, 96)))
