"""The stages on a local Ray cluster (`--distributor ray`): the same bytes as the local executor,
a worker SIGKILLed while it writes a shard, the driver killed mid-run, a shard that keeps failing."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from conftest import forget_requests  # noqa: E402

from mrw import paths, shards, stage  # noqa: E402
from mrw.demo import FAULTS, SampleServer, write_sample_release  # noqa: E402
from mrw.download import download_split  # noqa: E402
from mrw.features import FeaturesStage, extract_features  # noqa: E402
from mrw.frames import extract_frames  # noqa: E402
from mrw.releases import build_catalog  # noqa: E402
from mrw.stage import Distribution, ShardsFailed, run_stage  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RAY = Distribution("ray", max_shard_retry=2)
DOWNLOAD = {"shard_size": 6, "max_bytes": 1 << 20, "timeout": 5.0, "retries": 1, "backoff": 0.05}
FEATURES = {"backbone": "resnet18", "weights": "none", "max_frames": 3, "workers": 0}
_TMP_DATA = re.compile(r"^\.tmp-(shard-\d+\.parquet)\.(\d+)\.[0-9a-f]+$")


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster of 2 CPUs for this file; its address for drivers in subprocesses."""
    info = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield info.address_info["gcs_address"]
    finally:
        ray.shutdown()


def _files(stage_dir: Path) -> dict:
    return {
        str(p.relative_to(stage_dir)): p.read_bytes() for p in sorted(stage_dir.rglob("shard-*"))
    }


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """24 items in 4 shards, every fault of the sample server; downloaded by the local executor."""
    base = tmp_path_factory.mktemp("ray-faulty")
    rel = base / "rel"
    rel.mkdir()
    with SampleServer(rel) as srv:
        write_sample_release(
            rel,
            "mrw",
            srv.url,
            counts={"train": 0, "val": 0, "test": 24},
            faults=list(FAULTS),
            seed=5,
        )
        local = base / "local"
        build_catalog("mrw", "test", root=local, source=str(rel))
        download_split(root=local, split="test", workers=8, progress=False, **DOWNLOAD)
        yield rel, local, srv


def test_download_on_ray_writes_the_bytes_of_the_local_executor(cluster, faulty, tmp_path):
    rel, local, srv = faulty
    forget_requests(srv)
    root = tmp_path / "ray"
    build_catalog("mrw", "test", root=root, source=str(rel))
    report = download_split(
        root=root, split="test", workers=8, progress=False, distribution=RAY, **DOWNLOAD
    )
    assert report.shards == 4 and report.ok + report.failed == 24 and report.failed >= 10
    videos = _files(paths.videos_dir(local, "mrw", "test"))
    assert len(videos) == 8  # data and status of 4 shards
    ours = shards.read_status(paths.videos_dir(root, "mrw", "test")).to_pylist()
    assert ours == shards.read_status(paths.videos_dir(local, "mrw", "test")).to_pylist()
    assert _files(paths.videos_dir(root, "mrw", "test")) == videos


@pytest.fixture(scope="module")
def extracted(faulty):
    """The local executor's frame and feature shards of the downloaded split."""
    _, local, _ = faulty
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a Ray worker of 1 CPU
    try:
        extract_frames(root=local, split="test", workers=2, progress=False)
        extract_features(root=local, split="test", progress=False, **FEATURES)
    finally:
        torch.set_num_threads(threads)
    return local


def test_frames_and_features_on_ray_write_the_bytes_of_the_local_executor(
    cluster, extracted, tmp_path
):
    local = extracted
    root = tmp_path / "ray"
    shutil.copytree(local, root, ignore=shutil.ignore_patterns("frames", "features"))
    report = extract_frames(root=root, split="test", progress=False, distribution=RAY)
    assert report.shards_done == 4 and report.items_ok > 0 and report.frames > 0
    frames = _files(paths.frames_dir(local, "mrw", "test"))
    assert len(frames) == 8 and _files(paths.frames_dir(root, "mrw", "test")) == frames

    extract_features(root=root, split="test", progress=False, distribution=RAY, **FEATURES)
    features = _files(paths.features_dir(local, "mrw", "test", "resnet18"))
    assert len(features) == 8
    assert _files(paths.features_dir(root, "mrw", "test", "resnet18")) == features


@pytest.mark.slow
def test_the_gpu_actor_path_writes_the_same_features(cluster, extracted, tmp_path):
    """One actor per GPU that loads the backbone once, here with no GPU (num_gpus=0)."""
    local = extracted
    root = tmp_path / "actors"
    shutil.copytree(local, root)
    stage_dir = paths.features_dir(root, "mrw", "test", "resnet18")
    shutil.rmtree(paths.status_dir(stage_dir))
    for p in shards.data_shards(stage_dir):
        p.unlink()
    stage = FeaturesStage(
        source="frames",
        source_dir=paths.frames_dir(root, "mrw", "test"),
        stage_dir=stage_dir,
        backbone="resnet18",
        weights="none",
        gpu=False,
        batch_size=None,
        max_frames=3,
        workers=0,
        decode=None,
        images=False,
        device_decode=False,
        actor_gpus=0.0,
    )
    done, failed = run_stage(stage, [0, 1, 2, 3], replace(RAY, actors=2))
    assert done == [0, 1, 2, 3] and not failed
    assert _files(stage_dir) == _files(paths.features_dir(local, "mrw", "test", "resnet18"))


def test_a_worker_killed_while_writing_a_shard_is_retried(cluster, tmp_path):
    """SIGKILL the Ray worker whose temporary shard file appears: the run still completes."""
    rel = tmp_path / "rel"
    rel.mkdir()
    with SampleServer(rel, latency=0.25) as srv:
        write_sample_release(rel, "mrw", srv.url, counts={"train": 0, "val": 0, "test": 12})
        options = {**DOWNLOAD, "shard_size": 3, "timeout": 10.0, "workers": 1}
        local = tmp_path / "local"
        build_catalog("mrw", "test", root=local, source=str(rel))
        download_split(root=local, split="test", progress=False, **options)
        root = tmp_path / "ray"
        build_catalog("mrw", "test", root=root, source=str(rel))
        stage_dir = paths.videos_dir(root, "mrw", "test")
        outcome: dict = {}

        def driver():
            try:
                outcome["report"] = download_split(
                    root=root, split="test", progress=False, distribution=RAY, **options
                )
            except BaseException as e:
                outcome["error"] = e

        thread = threading.Thread(target=driver, daemon=True)
        thread.start()
        killed = None
        deadline = time.monotonic() + 120
        while killed is None and thread.is_alive() and time.monotonic() < deadline:
            for p in stage_dir.glob(".tmp-shard-*"):
                m = _TMP_DATA.match(p.name)
                if m and int(m.group(2)) != os.getpid():
                    killed = (m.group(1), int(m.group(2)))
                    os.kill(killed[1], signal.SIGKILL)
                    break
            time.sleep(0.02)
        thread.join(timeout=180)
        assert killed is not None, "no shard was seen being written"
        assert not thread.is_alive() and "error" not in outcome, outcome
    assert outcome["report"].ok == 12
    assert _files(stage_dir) == _files(paths.videos_dir(local, "mrw", "test"))
    assert not list(stage_dir.rglob(".tmp-*"))


def test_the_driver_killed_mid_run_then_a_rerun_finishes_only_the_missing_shards(cluster, tmp_path):
    rel = tmp_path / "rel"
    rel.mkdir()
    with SampleServer(rel, latency=0.3) as srv:
        write_sample_release(rel, "mrw", srv.url, counts={"train": 0, "val": 0, "test": 12})
        options = ["--shard-size", "2", "--workers", "1", "--max-bytes", 1 << 20]
        local = tmp_path / "local"
        build_catalog("mrw", "test", root=local, source=str(rel))
        download_split(
            root=local, split="test", shard_size=2, workers=1, max_bytes=1 << 20, progress=False
        )
        root = tmp_path / "ray"
        build_catalog("mrw", "test", root=root, source=str(rel))
        stage_dir = paths.videos_dir(root, "mrw", "test")
        env = {**os.environ, "RAY_ADDRESS": cluster}  # the default --ray-address is then auto
        proc = subprocess.Popen(
            [sys.executable, "-m", "mrw.cli", "download", "--root", root, "--split", "test"]
            + [str(o) for o in options]
            + ["--distributor", "ray", "--metadata", str(rel)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 120
            while not shards.status_shards(stage_dir) and time.monotonic() < deadline:
                assert proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        finished = {p.name: p.stat().st_mtime_ns for p in shards.status_shards(stage_dir)}
        assert 1 <= len(finished) < 6, finished
        requests = srv.requests
        report = download_split(
            root=root,
            split="test",
            shard_size=2,
            workers=1,
            max_bytes=1 << 20,
            progress=False,
            distribution=RAY,
        )
        again = {k: v - requests.get(k, 0) for k, v in srv.requests.items() if v != requests.get(k)}
    assert report.skipped_shards == len(finished) and report.ok == 12
    assert {p.name: p.stat().st_mtime_ns for p in shards.status_shards(stage_dir)}.items() >= (
        finished.items()
    )
    # only the items of the missing shards were fetched again
    assert len(again) == 12 - 2 * len(finished)
    assert _files(stage_dir) == _files(paths.videos_dir(local, "mrw", "test"))


def test_a_shard_that_always_fails_on_ray_is_reported_and_the_others_complete(
    cluster, faulty, tmp_path
):
    _, local, _ = faulty
    root = tmp_path / "broken"
    shutil.copytree(local, root, ignore=shutil.ignore_patterns("frames", "features"))
    data = shards.data_path(paths.videos_dir(root, "mrw", "test"), 2)
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ShardsFailed) as info:  # through the Python API
        stage.run(
            "extract-frames",
            root=root,
            split="test",
            progress=False,
            distributor="ray",
            max_shard_retry=1,
        )
    assert list(info.value.failed) == [2] and "shard 2:" in str(info.value)
    assert info.value.report.shards_done == 3
    frames = paths.frames_dir(root, "mrw", "test")
    assert {shards.shard_index(p) for p in shards.status_shards(frames)} == {0, 1, 3}
    assert not list(frames.rglob(".tmp-*"))
