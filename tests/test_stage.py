"""The stage runner with the local executor: `download --retry-failed`, a shard that keeps failing,
option checks, the JPEG decoding of `extract-features --gpu` (run on the CPU), one skeleton."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from mrw import paths, shards
from mrw.backbones import decode_crops, preprocess
from mrw.demo import SampleServer, write_sample_release
from mrw.download import download_split, error_class_matches, parse_only
from mrw.errors import UsageError
from mrw.features import extract_features, read_features
from mrw.frames import decode_jpeg, extract_frames
from mrw.releases import build_catalog
from mrw.stage import Distribution, ShardsFailed

REPO = Path(__file__).resolve().parent.parent
OPTIONS = {"shard_size": 5, "max_bytes": 1 << 20, "timeout": 5.0, "backoff": 0.05}


def _mrw(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "mrw.cli", *map(str, args)], capture_output=True, text=True, **kw
    )


def _files(stage_dir: Path) -> dict:
    """Every shard file (data and status) -> its bytes."""
    return {
        str(p.relative_to(stage_dir)): p.read_bytes() for p in sorted(stage_dir.rglob("shard-*"))
    }


def _stamps(stage_dir: Path) -> dict:
    return {
        str(p.relative_to(stage_dir)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(stage_dir.rglob("shard-*"))
    }


# -- download --retry-failed ------------------------------------------------------------------
@pytest.fixture(scope="module")
def flaky(tmp_path_factory):
    """40 items in 8 shards; one answers 500 once, one 429 once, one always 404; no retries."""
    base = tmp_path_factory.mktemp("flaky")
    rel = base / "rel"
    rel.mkdir()
    with SampleServer(rel) as srv:
        write_sample_release(
            rel,
            "mrw",
            srv.url,
            counts={"train": 0, "val": 0, "test": 40},
            faults=["500-then-ok", "429-then-ok", "404"],
            seed=3,
        )
        root = base / "root"
        build_catalog("mrw", "test", root=root, source=str(rel))
        download_split(
            root=root, split="test", retries=0, workers=4, progress=False, log=print, **OPTIONS
        )
        yield rel, root, srv


def test_retry_failed_refetches_only_failures_and_equals_a_clean_run(flaky, tmp_path):
    rel, root, srv = flaky
    stage = paths.videos_dir(root, "mrw", "test")
    first = {r["id"]: r for r in shards.read_status(stage).to_pylist()}
    classes = sorted({r["error"].split(":")[0] for r in first.values() if r["error"]})
    assert classes == ["http_404", "http_429", "http_500"]
    before, stamps = _files(stage), _stamps(stage)
    requests_before = srv.requests

    res = _mrw(
        "download",
        "--retry-failed",
        "--only",
        "http_5xx,http_429",
        "--root",
        root,
        "--split",
        "test",
        "--shard-size",
        OPTIONS["shard_size"],
        "--max-bytes",
        OPTIONS["max_bytes"],
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr
    assert "retried: 2 shards" in res.stderr

    # only the two retried items were fetched again, once each
    again = {
        k: v - requests_before.get(k, 0)
        for k, v in srv.requests.items()
        if v != requests_before.get(k)
    }
    assert sorted(k.split("/")[1] for k in again) == ["429-then-ok", "500-then-ok"]
    assert set(again.values()) == {1}

    after = _files(stage)
    touched = {k for k in after if after[k] != before.get(k)}
    untouched = set(after) - touched
    # the shard with the 404 alone and the shards without failures were not rewritten
    order = pq.read_table(paths.catalog_path(root, "mrw", "test")).column("id").to_pylist()
    retried = [i for i, r in first.items() if r["error"] and "404" not in r["error"]]
    expected = {shards.shard_name(order.index(i) // OPTIONS["shard_size"]) for i in retried}
    assert len(expected) == 2 and {k.split("/")[-1] for k in touched} == expected
    assert all(_stamps(stage)[k] == stamps[k] for k in untouched)
    status = {r["id"]: r for r in shards.read_status(stage).to_pylist()}
    assert sorted(r["error"].split(":")[0] for r in status.values() if r["error"]) == ["http_404"]

    # a clean run, where those items answer at once, gives the same bytes everywhere
    clean = tmp_path / "clean"
    build_catalog("mrw", "test", root=clean, source=str(rel))
    download_split(root=clean, split="test", retries=0, workers=4, progress=False, **OPTIONS)
    assert _files(paths.videos_dir(clean, "mrw", "test")) == after

    # nothing left to retry of those classes: no shard is rewritten, no request made
    requests_now = srv.requests
    report = download_split(
        root=root,
        split="test",
        retry_failed=True,
        only="http_5xx",
        progress=False,
        **OPTIONS,
    )
    assert report.retried_shards == 0 and srv.requests == requests_now
    assert _files(stage) == after


def test_retry_failed_leaves_a_shard_alone_when_the_item_fails_the_same_way(flaky):
    _, root, _ = flaky
    stage = paths.videos_dir(root, "mrw", "test")
    stamps = _stamps(stage)
    report = download_split(
        root=root, split="test", retry_failed=True, only="http_404", progress=False, **OPTIONS
    )
    assert report.retried_shards == 0 and report.failed == 1
    assert _stamps(stage) == stamps


def test_only_classes_and_their_errors():
    assert parse_only("timeout, http_5xx") == ("timeout", "http_5xx")
    assert error_class_matches("http_503: Service Unavailable", ("http_5xx",))
    assert not error_class_matches("http_404: Not Found", ("http_5xx",))
    assert not error_class_matches("http_5000: odd", ("http_5xx",))
    assert error_class_matches("timeout: read", ())
    for bad in ("", "timeout,,http_5xx", "http-5xx"):
        with pytest.raises(UsageError, match="--only"):
            parse_only(bad)


def test_bad_distribution_options_exit_2_with_one_line(flaky):
    _, root, _ = flaky
    for args, message in (
        (["--only", "timeout"], "--only goes with --retry-failed"),
        (["--retry-failed", "--only", ""], "--only must be"),
        (["--max-shard-retry", "-1"], "max-shard-retry"),
        (["--distributor", "spark"], "distributor"),
        (["--retry-failed", "--catalog-only"], "exclude each other"),
    ):
        res = _mrw("download", "--root", root, "--split", "test", *args, cwd=REPO)
        assert res.returncode == 2 and message in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr
    for bad in (
        Distribution(max_shard_retry=-1),
        Distribution(ray_address=" "),
        Distribution(distributor="dask"),
        Distribution(actors=0),
    ):
        with pytest.raises(UsageError):
            bad.check()


# -- a shard that keeps failing ---------------------------------------------------------------
def _broken_copy(root: Path, dst: Path, index: int) -> Path:
    """A copy of `root` whose video shard `index` has its data file cut in half."""
    shutil.copytree(root, dst)
    data = shards.data_path(paths.videos_dir(dst, "mrw", "test"), index)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    return dst


def test_a_shard_that_always_fails_is_reported_and_the_others_complete(flaky, tmp_path):
    _, root, _ = flaky
    broken = _broken_copy(root, tmp_path / "broken", 3)
    with pytest.raises(ShardsFailed) as info:
        extract_frames(root=broken, split="test", workers=2, progress=False)
    assert list(info.value.failed) == [3] and "shard 3" in str(info.value)
    assert info.value.report.shards_done == 7
    frames = paths.frames_dir(broken, "mrw", "test")
    complete = {shards.shard_index(p) for p in shards.status_shards(frames)}
    assert complete == set(range(8)) - {3}
    assert not list(frames.rglob(".tmp-*"))

    res = _mrw("extract-frames", "--root", broken, "--split", "test", cwd=REPO)
    assert res.returncode == 1, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("mrw: error: 1 shard(s) failed") and "shard 3:" in last
    assert "Traceback" not in res.stderr and "0 shards written, 7 already complete" in res.stderr


def test_the_local_executor_never_imports_ray(flaky, tmp_path):
    _, root, _ = flaky
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    code = (
        "import sys\n"
        "from mrw.stage import run\n"
        f"run('extract-frames', root={str(copy)!r}, split='test', workers=2, progress=False)\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
        "print('ok')\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
    assert len(shards.status_shards(paths.frames_dir(copy, "mrw", "test"))) == 8


# -- JPEG frames decoded by the device path (here: the CPU) -----------------------------------
def test_device_jpeg_decoding_matches_the_worker_path(flaky, tmp_path, one_torch_thread):
    _, root, _ = flaky
    copy = tmp_path / "dev"
    shutil.copytree(root, copy)
    extract_frames(root=copy, split="test", workers=2, progress=False)
    frames = paths.frames_dir(copy, "mrw", "test")
    row = pq.read_table(shards.data_shards(frames)[0]).slice(0, 1).to_pylist()[0]
    jpegs = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in row["frames"][:6]]
    on_device = decode_crops(jpegs, torch.device("cpu"))
    reference = torch.stack(
        [preprocess(Image.fromarray(decode_jpeg(f))) for f in row["frames"][:6]]
    )
    assert on_device.shape == reference.shape == (6, 3, 224, 224)
    assert on_device.dtype == torch.uint8
    diff = (on_device.int() - reference.int()).abs().float()
    assert diff.mean() < 1.5 and diff.max() <= 24, (diff.mean(), diff.max())

    # the whole stage: features through the device path equal the worker path's closely
    other = tmp_path / "dev2"
    shutil.copytree(copy, other)
    common = dict(
        split="test", backbone="resnet18", weights="none", max_frames=2, workers=0, progress=False
    )
    extract_features(root=copy, device_decode=False, **common)
    report = extract_features(root=other, device_decode=True, **common)
    assert report.items_failed == 0 and report.items_ok == 39
    a = paths.features_dir(copy, "mrw", "test", "resnet18")
    b = paths.features_dir(other, "mrw", "test", "resnet18")
    rows_a = [r for f in shards.data_shards(a) for r in pq.read_table(f).to_pylist()]
    rows_b = [r for f in shards.data_shards(b) for r in pq.read_table(f).to_pylist()]
    assert [r["id"] for r in rows_a] == [r["id"] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        fa, fb = read_features(ra).astype(np.float32), read_features(rb).astype(np.float32)
        cos = (fa * fb).sum(1) / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1))
        assert cos.min() > 0.99, (ra["id"], cos.min())
    assert _files(a).keys() == _files(b).keys()


# -- one skeleton -----------------------------------------------------------------------------
def _windows(path: Path, size: int) -> dict:
    lines = [
        ln.strip()
        for ln in path.read_text().splitlines()
        if ln.strip()
        and not ln.strip().startswith(("#", '"""', "from ", "import ", ")", "]"))
        and not re.fullmatch(r"[\w.]+,", ln.strip())  # a name in a list of imports or arguments
    ]
    out = {}
    for i in range(len(lines) - size + 1):
        block = "\n".join(lines[i : i + size])
        out.setdefault(hashlib.sha1(block.encode()).hexdigest(), block)
    return out


def test_no_stage_module_keeps_its_own_copy_of_the_skeleton():
    """No run of 6 code lines appears in two of the stage modules and the runner."""
    modules = ["download.py", "frames.py", "features.py", "stage.py"]
    seen: dict = {}
    for name in modules:
        for key, block in _windows(REPO / "mrw" / name, 6).items():
            seen.setdefault(key, (block, set()))[1].add(name)
    shared = [(block, names) for block, names in seen.values() if len(names) > 1]
    assert not shared, shared[:3]
    for name in modules[:3]:
        text = (REPO / "mrw" / name).read_text()
        assert re.search(r"run_stage\(|run_and_report\(", text) and "tqdm(" not in text
        assert not re.search(r"^(class StageReport|def complete_shards)", text, re.M)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_jpeg_decoding_on_cuda_matches_the_cpu(flaky, tmp_path):
    _, root, _ = flaky
    copy = tmp_path / "cuda"
    shutil.copytree(root, copy)
    extract_frames(root=copy, split="test", workers=2, progress=False)
    frames = paths.frames_dir(copy, "mrw", "test")
    row = pq.read_table(shards.data_shards(frames)[0]).slice(0, 1).to_pylist()[0]
    jpegs = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in row["frames"]]
    on_gpu = decode_crops(jpegs, torch.device("cuda")).cpu()
    on_cpu = decode_crops(jpegs, torch.device("cpu"))
    diff = (on_gpu.int() - on_cpu.int()).abs().float()
    assert diff.mean() < 1.0 and diff.max() <= 16, (diff.mean(), diff.max())
    report = extract_features(
        root=copy, split="test", backbone="resnet18", weights="none", gpu=True, progress=False
    )
    assert report.items_failed == 0 and report.items_ok == 39
