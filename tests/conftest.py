import os
import tempfile

import pytest
import torch

# Two cores: keep torch from oversubscribing when pytest and helpers share the machine.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True, scope="session")
def _temp_folder(tmp_path_factory):
    """Every temporary file of the suite and of the processes it starts (servers, Ray nodes and
    their trials' scratch, MLflow's model downloads) goes under pytest's base folder, which pytest
    removes when the run passes: runs on a shared disk leave nothing behind."""
    tmp = tmp_path_factory.mktemp("tmp", numbered=False)
    os.environ["TMPDIR"] = str(tmp)
    # Ray keeps unix sockets under its temp folder: its paths must stay under 108 characters.
    os.environ.setdefault("RAY_TMPDIR", "/tmp")
    tempfile.tempdir = str(tmp)


@pytest.fixture(autouse=True, scope="session")
def _model_cache(tmp_path_factory):
    """Checkpoints fetched by ``--model`` go to a temporary cache, not the user's ~/.cache
    (subprocesses inherit it)."""
    os.environ["SIMSC_MODEL_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_embedded(tmp_path_factory):
    """A small embedded data set (8/4/4 pairs of about 100 px) shared by the engine and CLI tests."""
    from simsc.data.embedded import build_embedded_dataset

    root = tmp_path_factory.getbasetemp() / "embedded-tiny"
    return build_embedded_dataset(root, n_train=8, n_val=4, n_test=4, progress=False, image_size=((96, 72), (128, 96)))


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs: a disk that fills up (needs the right to mount, e.g. root in a
    container); the test is skipped where mounting is not allowed."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)
