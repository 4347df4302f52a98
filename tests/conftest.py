from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """No test touches ~/.cache/mrw: the default root points into the test's tmp folder."""
    monkeypatch.setenv("MRW_HOME", str(tmp_path / "mrw-home"))
    yield


@pytest.fixture
def root(tmp_path):
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: on a busy shared CPU, spinning OpenMP threads slow training ~20x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
