"""The one helper of each kind: atomic writes, the device, JPEG decoding, frame sampling."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mrw import shards
from mrw.errors import UsageError
from mrw.frames import DecodeError, decode_jpeg, encode_jpeg
from mrw.releases.release import remove_stale_temporaries
from mrw.sampling import SPREAD, sample_frame_indices

REPO = Path(__file__).resolve().parent.parent


# -- atomic writes ------------------------------------------------------------------------------
def test_atomic_path_renames_a_finished_file_over_the_old_one(tmp_path):
    target = tmp_path / "deep" / "out.json"
    shards.write_json_atomic({"a": 1}, target)
    with shards.atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(shards.TMP_PREFIX)
        tmp.write_text("new")
        assert target.read_text().startswith("{")  # the old file stands until the rename
    assert target.read_text() == "new"
    assert os.listdir(target.parent) == ["out.json"]


@pytest.mark.parametrize("folder", [False, True])
def test_atomic_path_leaves_nothing_when_the_block_fails(tmp_path, folder):
    target = tmp_path / "out"
    if not folder:
        target.write_text("old")
    with pytest.raises(RuntimeError), shards.atomic_path(target) as tmp:
        if folder:
            tmp.mkdir()
            (tmp / "half").write_text("x")
        else:
            tmp.write_text("half")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if folder else ["out"])
    if not folder:
        assert target.read_text() == "old"


def test_temporary_owner_reads_the_pid_of_temporary_path(tmp_path):
    tmp = shards.temporary_path(tmp_path / "release-x")
    assert shards.temporary_owner(tmp) == os.getpid()
    assert shards.temporary_owner(tmp_path / "release-x") is None
    assert shards.temporary_owner(tmp_path / ".tmp-x.12") is None  # no uuid part: not ours


def test_release_cache_keeps_a_live_fetch_and_clears_a_dead_one(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    live = shards.temporary_path(tmp_path / "key1")
    live.mkdir()
    gone = tmp_path / f"{shards.TMP_PREFIX}key2.{int(dead.stdout)}.0123abcd"
    gone.mkdir()
    remove_stale_temporaries(tmp_path)
    assert live.is_dir() and not gone.exists()


def _replace_calls(path: Path) -> int:
    tree = ast.parse(path.read_text())
    return sum(
        isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr in ("replace", "rename")
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == "os"
        for n in ast.walk(tree)
    )


def test_temp_then_rename_is_written_once():
    """Every module writes through `shards.atomic_path`; the preview's two-rename swap of a whole
    site folder (an old site moved aside first) is the only other rename."""
    found = {
        str(p.relative_to(REPO)): n
        for p in sorted([*REPO.glob("mrw/**/*.py"), *REPO.glob("baselines/**/*.py")])
        if (n := _replace_calls(p))
    }
    assert found == {"mrw/shards.py": 2, "mrw/preview/site.py": 2}, found


# -- the device ---------------------------------------------------------------------------------
def test_one_choose_device_for_every_command():
    import torch

    from mrw.device import choose_device

    assert choose_device(False) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="--gpu was given but CUDA is not available"):
            choose_device(True)
    defs = [
        str(p.relative_to(REPO))
        for p in [*REPO.glob("mrw/**/*.py"), *REPO.glob("baselines/**/*.py")]
        if "def choose_device(" in p.read_text()
    ]
    assert defs == ["mrw/device.py"]


# -- JPEG decoding ------------------------------------------------------------------------------
def test_decode_jpeg_is_the_frame_encoders_inverse_and_refuses_what_is_not_an_image():
    rgb = np.zeros((8, 12, 3), np.uint8)
    rgb[..., 0] = 200
    back = decode_jpeg(encode_jpeg(rgb, quality=95))
    assert back.shape == (8, 12, 3) and np.abs(back.astype(int) - rgb).max() <= 3
    for junk in (b"", b"not a jpeg", encode_jpeg(rgb)[:20]):
        with pytest.raises(DecodeError):
            decode_jpeg(junk)


def test_grey_jpegs_decode_to_three_channels():
    ok, buf = cv2.imencode(".jpg", np.full((4, 4), 90, np.uint8))
    assert ok
    out = decode_jpeg(buf.tobytes())
    assert out.shape == (4, 4, 3) and np.abs(out.astype(int) - 90).max() <= 2


def test_one_jpeg_decoder():
    """The loader, extract-features and the preview decode stored frames with `decode_jpeg`."""
    for module in ("mrw/loader/base.py", "mrw/features.py", "mrw/preview/strips.py"):
        text = (REPO / module).read_text()
        assert "decode_jpeg" in text and "Image.open(" not in text and "imdecode" not in text


# -- frame sampling -----------------------------------------------------------------------------
def _spread_written_out(n: int, k: int) -> list[int]:
    """k indices evenly from 0 to n-1, rounded half to even (numpy's `linspace` then `round`)."""
    if n <= k:
        return list(range(n))
    return np.linspace(0, n - 1, k).round().astype(int).tolist()


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 7, 16, 17, 33, 100, 257])
@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 16])
def test_spread_is_what_extract_features_and_the_preview_took(n, k):
    assert sample_frame_indices(n, k, SPREAD) == _spread_written_out(n, k)


def test_spread_keeps_the_clip_span_where_uniform_keeps_the_reference_intervals():
    assert sample_frame_indices(20, 4, SPREAD) == [0, 6, 13, 19]
    assert sample_frame_indices(20, 4) == [0, 5, 10, 15]  # the reference: first 4 intervals
    assert sample_frame_indices(3, 5, SPREAD) == [0, 1, 2]  # never repeats
    assert sample_frame_indices(3, 5) == [0, 1, 2, 2, 2]  # the reference pads


def test_one_frame_sampler():
    for module in ("mrw/features.py", "mrw/preview/strips.py", "mrw/loader/base.py"):
        text = (REPO / module).read_text()
        assert "sample_frame_indices" in text and "linspace" not in text


def test_the_cpu_evaluator_does_not_load_torch():
    """Loading torch costs about 0.5 GiB and slows the evaluator's BLAS: only `--gpu` needs it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from mrw.device import device_name\n"
        "from mrw.evaluation import evaluate_submission\n"
        "assert device_name(False) == 'cpu'\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
