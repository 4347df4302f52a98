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
