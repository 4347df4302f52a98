import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mrw.demo import FAULTS, SampleServer, write_sample_release

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


def forget_requests(server: SampleServer) -> None:
    """Forget the requests seen, so the `-then-ok` faults fail once more for the next run."""
    with server._server._lock:
        server._server.requests.clear()


def process_running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (read from /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def child_pids(pid: int) -> list[int]:
    """The pids of process `pid`'s children (from /proc; empty once it is gone)."""
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                kids += [int(p) for p in fh.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return kids


@pytest.fixture(scope="session")
def fault_server(tmp_path_factory) -> Iterator[SampleServer]:
    """One fault-injecting server on 127.0.0.1 for the session; it serves `sample_release`.

    A test that serves files of its own puts them in a folder of its own under `served_root`.
    """
    with SampleServer(tmp_path_factory.mktemp("served")) as server:
        yield server


def served_root(server: SampleServer) -> Path:
    return server._server.root


@pytest.fixture(scope="session")
def sample_release(fault_server) -> Path:
    """The sample MRW release served by `fault_server`: 200 test items, every fault once.

    For reading only: a test that changes it works on a copy (`shutil.copytree`).
    """
    return write_sample_release(
        served_root(fault_server),
        "mrw",
        fault_server.url,
        counts={"train": 0, "val": 0, "test": 200},
        faults=list(FAULTS),
        seed=11,
    )


@pytest.fixture(scope="session")
def sample_clip(sample_release) -> str:
    """The file name (under `media/`) of a sample release item that is served without a fault."""
    faulty = json.loads((sample_release / "faults.json").read_text())
    return next(
        p.name for p in sorted((sample_release / "media").iterdir()) if p.stem not in faulty
    )


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: on a busy shared CPU, spinning OpenMP threads slow training ~20x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
