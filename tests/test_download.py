"""`mrw download` (media part) against the real local server: faults, resume after SIGKILL,
--from-dir, COCO images, bad input."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import ClassVar

import pyarrow.parquet as pq
import pytest
from conftest import child_pids, forget_requests, process_running, served_root

from mrw import download as download_module
from mrw import paths, shards
from mrw.demo import FAULTS, SampleServer, write_sample_release
from mrw.download import auto_processes, download_split
from mrw.errors import UsageError
from mrw.itempool import ProcessItemPool
from mrw.releases import build_catalog


def _mrw(*args, env_root=None, **kw):
    return subprocess.run(
        [sys.executable, "-m", "mrw.cli", *map(str, args)], capture_output=True, text=True, **kw
    )


def _status(root, dataset="mrw", split="test"):
    return {
        r["id"]: r for r in shards.read_status(paths.videos_dir(root, dataset, split)).to_pylist()
    }


def _rows(root, dataset="mrw", split="test"):
    stage = paths.videos_dir(root, dataset, split)
    return [r for f in shards.data_shards(stage) for r in pq.read_table(f).to_pylist()]


# -- 200+ items, every fault ---------------------------------------------------------
FAULTY_OPTIONS = dict(
    workers=16,
    shard_size=64,
    timeout=2.0,
    retries=1,
    max_bytes=1 << 20,
    backoff=0.05,
    progress=False,
)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory, fault_server, sample_release):
    rel, srv = sample_release, fault_server
    forget_requests(srv)
    root = tmp_path_factory.mktemp("faulty") / "root"
    build_catalog("mrw", "test", root=root, source=str(rel))
    report = download_split(root=root, dataset="mrw", split="test", **FAULTY_OPTIONS)
    return rel, root, report, srv


def test_every_fault_is_classified_and_every_ok_row_is_the_served_file(faulty):
    rel, root, report, _ = faulty
    status = _status(root)
    assert len(status) == 200 and report.items == 200
    plan = json.loads((rel / "faults.json").read_text())
    assert sorted(v["fault"] for v in plan.values()) == sorted(FAULTS)
    for item_id, f in plan.items():
        row = status[item_id]
        if f["error"] is None:
            assert row["status"] == "ok", (f, row)
        else:
            assert row["status"] == "failed" and row["error"].split(":")[0] == f["error"], (f, row)
    assert status[next(i for i, f in plan.items() if f["fault"] == "500-then-ok")]["attempts"] == 2
    assert status[next(i for i, f in plan.items() if f["fault"] == "429-then-ok")]["attempts"] == 2
    rows = _rows(root)
    ok_ids = {i for i, r in status.items() if r["status"] == "ok"}
    assert {r["id"] for r in rows} == ok_ids and len(rows) == len(ok_ids) == 200 - sum(
        1 for f in plan.values() if f["error"]
    )
    for r in rows:
        served = (rel / "media" / f"{r['id']}.mp4").read_bytes()
        assert r["video"] == served and r["sha256"] == hashlib.sha256(served).hexdigest()
        assert r["format"] == "mp4" and r["num_frames"] >= 2 and r["fps"] > 0 and r["width"] >= 64
    # catalog order inside the shards
    order = pq.read_table(paths.catalog_path(root, "mrw", "test")).column("id").to_pylist()
    assert [r["id"] for r in rows] == [i for i in order if i in ok_ids]
    assert report.errors["timeout"] == 2 and report.errors["too_large"] == 2
    assert "redirect_loop: 1" in report.summary()


def test_rerun_skips_complete_shards_and_changes_nothing(faulty):
    _, root, _, srv = faulty
    stage = paths.videos_dir(root, "mrw", "test")
    before = {p.name: p.read_bytes() for p in stage.rglob("*.parquet")}
    requests_before = sum(srv.requests.values())
    report = download_split(
        root=root, dataset="mrw", split="test", shard_size=64, max_bytes=1 << 20, progress=False
    )
    assert report.skipped_shards == report.shards == 4 and report.ok + report.failed == 200
    assert {p.name: p.read_bytes() for p in stage.rglob("*.parquet")} == before
    assert sum(srv.requests.values()) == requests_before, "a complete shard was fetched again"


def test_other_settings_are_refused(faulty):
    _, root, _, _ = faulty
    with pytest.raises(UsageError, match="shard_size"):
        download_split(
            root=root, dataset="mrw", split="test", shard_size=10, max_bytes=1 << 20, progress=False
        )


# -- items in worker processes --------------------------------------------------------------
def _parquet_files(root):
    stage = paths.videos_dir(root, "mrw", "test")
    return {str(p.relative_to(stage)): p.read_bytes() for p in sorted(stage.rglob("*.parquet"))}


class _SpyPool(ProcessItemPool):
    """The real pool, remembering its workers' pids; with `kill_at`, SIGKILLs its first worker
    when that many items have been submitted."""

    pids_seen: ClassVar[set] = set()
    kill_at: ClassVar[int | None] = None
    killed: ClassVar[list] = []

    def submit(self, item):
        type(self).pids_seen.update(self.pids())
        future = super().submit(item)
        if self._seq == type(self).kill_at:
            victim = self.pids()[0]
            os.kill(victim, signal.SIGKILL)
            type(self).killed.append(victim)
        return future


@pytest.fixture
def spy_pool(monkeypatch):
    monkeypatch.setattr(_SpyPool, "pids_seen", set())
    monkeypatch.setattr(_SpyPool, "killed", [])
    monkeypatch.setattr(download_module, "ProcessItemPool", _SpyPool)
    return _SpyPool


def test_worker_processes_write_the_same_shards_as_threads(faulty, tmp_path, spy_pool):
    rel, root, report, srv = faulty
    forget_requests(srv)
    other = tmp_path / "root"
    build_catalog("mrw", "test", root=other, source=str(rel))
    again = download_split(root=other, dataset="mrw", split="test", processes=2, **FAULTY_OPTIONS)
    assert len(spy_pool.pids_seen) == 2 and os.getpid() not in spy_pool.pids_seen
    assert (again.ok, again.errors) == (report.ok, report.errors)
    assert _parquet_files(other) == _parquet_files(root)  # data and status, byte for byte


def test_a_killed_worker_process_fails_its_shard_and_the_retry_completes(
    fault_server, tmp_path, spy_pool
):
    own = served_root(fault_server) / "killed-worker"
    own.mkdir()
    rel = write_sample_release(
        own, "mrw", f"{fault_server.url}/killed-worker", counts={"train": 0, "val": 0, "test": 48}
    )
    options = dict(dataset="mrw", split="test", workers=4, shard_size=16, progress=False)
    runs = {}
    for name, procs, kill_at in (("threads", 1, None), ("killed", 2, 20)):
        spy_pool.kill_at = kill_at
        runs[name] = tmp_path / name
        build_catalog("mrw", "test", root=runs[name], source=str(rel))
        report = download_split(root=runs[name], processes=procs, **options)
        assert (report.ok, report.failed, report.failed_shards) == (48, 0, {})
    assert len(spy_pool.killed) == 1 and spy_pool.killed[0] in spy_pool.pids_seen
    assert _parquet_files(runs["killed"]) == _parquet_files(runs["threads"])


def test_a_killed_download_leaves_no_worker_process(tmp_path):
    rel = tmp_path / "rel"
    rel.mkdir()
    with SampleServer(rel, latency=0.2) as srv:  # slow enough to be killed while it runs
        write_sample_release(rel, "mrw", srv.url, counts={"train": 0, "val": 0, "test": 40})
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mrw.cli",
                "download",
                "--root",
                str(tmp_path / "root"),
                "--split",
                "test",
                "--metadata",
                str(rel),
                "--processes",
                "2",
                "--workers",
                "4",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
            workers = child_pids(proc.pid)
            time.sleep(0.01)
        assert len(workers) == 2, "the download never started its worker processes"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while any(process_running(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not any(process_running(p) for p in workers), "a worker outlived its killed parent"


def test_ctrl_c_stops_the_download_and_its_workers_with_one_line(tmp_path):
    rel = tmp_path / "rel"
    rel.mkdir()
    with SampleServer(rel, latency=0.2) as srv:
        write_sample_release(rel, "mrw", srv.url, counts={"train": 0, "val": 0, "test": 40})
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mrw.cli",
                "download",
                "--root",
                str(tmp_path / "root"),
                "--split",
                "test",
                "--metadata",
                str(rel),
                "--processes",
                "2",
                "--workers",
                "4",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
            workers = child_pids(proc.pid)
            time.sleep(0.01)
        assert len(workers) == 2, "the download never started its worker processes"
        time.sleep(0.5)  # items in flight
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole group
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "interrupted" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert not any(process_running(p) for p in workers)


def test_processes_auto_and_bad_values():
    assert auto_processes(100, workers=16, per_host=4) == 1  # too small to pay for a process
    cpus = len(os.sched_getaffinity(0))
    assert auto_processes(100_000, workers=16, per_host=4) == min(cpus, 4)
    assert auto_processes(100_000, workers=16, per_host=1) == 1  # one connection per host
    assert auto_processes(100_000, workers=1, per_host=4) == 1
    with pytest.raises(UsageError, match="--processes"):
        download_split(root="/nonexistent", processes=-1, progress=False)


# -- SIGKILL at three moments, resume, byte-identical ----------------------------------
def _files(stage):
    return {
        str(p.relative_to(stage)): p.read_bytes() for p in sorted(stage.rglob("*")) if p.is_file()
    }


def test_kill_and_resume_gives_byte_identical_shards(tmp_path):
    rel = tmp_path / "rel"
    rel.mkdir()
    # only stateless faults: a fault that answers differently the second time would change `attempts`
    faults = ["404", "garbage", "corrupt", "redirect", "wrong-type", "too-large", "404", "garbage"]
    with SampleServer(rel, latency=0.1) as srv:
        write_sample_release(
            rel, "mrw", srv.url, counts={"train": 0, "val": 0, "test": 56}, faults=faults, seed=5
        )
        args = [
            "download",
            "--dataset",
            "mrw",
            "--split",
            "test",
            "--metadata",
            rel,
            "--workers",
            2,
            "--shard-size",
            8,
            "--timeout",
            10,
            "--max-bytes",
            1 << 20,
        ]
        ref_root, root = tmp_path / "ref", tmp_path / "killed"
        done = _mrw(*args, "--root", ref_root)
        assert done.returncode == 0, done.stderr
        ref = _files(paths.videos_dir(ref_root, "mrw", "test"))
        stage = paths.videos_dir(root, "mrw", "test")

        def status_count():
            return len(list((stage / "status").glob("shard-*.parquet"))) if stage.exists() else 0

        kills = 0
        for step in range(3):
            start = status_count()
            proc = subprocess.Popen(
                [sys.executable, "-m", "mrw.cli", *map(str, args), "--root", str(root)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 120
            # 1: right after the first shard; 2: in the middle of the shard after the next one;
            # 3: two shards further on
            target = 1 if step == 0 else start + (1 if step == 1 else 2)
            while proc.poll() is None and status_count() < target and time.monotonic() < deadline:
                time.sleep(0.01)
            if step == 1:
                time.sleep(0.2)  # a shard takes about a second here: this lands inside it
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
            proc.wait()
        assert kills == 3, "every kill should land before the run finished"
        last = _mrw(*args, "--root", root)
        assert last.returncode == 0, last.stderr
    got = _files(stage)
    assert got == ref  # same files, same bytes: data shards, status shards, manifest
    assert not [n for n in got if ".tmp-" in n]
    ids = [r["id"] for r in _rows(root)]
    assert len(ids) == len(set(ids)) == 56 - len(faults) + 2  # redirect and wrong-type succeed
    assert len(_status(root)) == 56


# -- --from-dir -----------------------------------------------------------------------
def test_from_dir_ingests_a_folder_and_reports_missing_files(tmp_path):
    rel = write_sample_release(
        tmp_path / "rel", "mrw", "http://127.0.0.1:9", counts={"train": 0, "val": 0, "test": 12}
    )
    media = rel / "media"
    gone = sorted(media.iterdir())[:3]
    for p in gone:
        p.unlink()
    root = tmp_path / "root"
    res = _mrw(
        "download",
        "--root",
        root,
        "--split",
        "test",
        "--metadata",
        rel,
        "--from-dir",
        media,
        "--shard-size",
        5,
    )
    assert res.returncode == 0, res.stderr
    assert "missing files: 3" in res.stderr and "9 ok, 3 failed" in res.stderr
    status = _status(root)
    missing = {i for i, r in status.items() if r["status"] == "failed"}
    assert missing == {p.stem for p in gone}
    assert all(status[i]["error"].startswith("missing:") for i in missing)
    rows = _rows(root)
    assert (
        all(r["video"] == (media / f"{r['id']}.mp4").read_bytes() for r in rows) and len(rows) == 9
    )


def test_coco_images_go_through_the_same_pipeline(tmp_path):
    rel = write_sample_release(
        tmp_path / "rel", "coco", "http://127.0.0.1:9", counts={"train": 3, "val": 2, "test": 7}
    )
    root = tmp_path / "root"
    build_catalog("coco", "test", root=root, source=str(rel))
    report = download_split(
        root=root, dataset="coco", split="test", from_dir=rel, shard_size=4, progress=False
    )
    assert report.ok == 7 and report.failed == 0
    rows = _rows(root, "coco")
    assert (
        len(rows) == 7
        and {r["format"] for r in rows} == {"jpeg"}
        and {r["num_frames"] for r in rows} == {1}
    )


def test_coco_over_http(tmp_path):
    """COCO's catalog URLs point at images.cocodataset.org; rewritten to the local server here."""
    from mrw.catalog import read_catalog, write_catalog

    rel = write_sample_release(
        tmp_path / "rel", "coco", "http://unused", counts={"train": 3, "val": 2, "test": 4}
    )
    root = tmp_path / "root"
    build_catalog("coco", "test", root=root, source=str(rel))
    with SampleServer(rel) as srv:
        rows = read_catalog(root, "coco", "test").to_pylist()
        for r in rows:
            r["url"] = f"{srv.url}/{r['filepath']}/{r['filename']}"
        write_catalog(rows, root, "coco", "test")
        report = download_split(
            root=root, dataset="coco", split="test", shard_size=3, progress=False
        )
    assert report.ok == 4
    for r in _rows(root, "coco"):
        cat = next(c for c in rows if c["id"] == r["id"])
        assert r["video"] == (rel / cat["filepath"] / cat["filename"]).read_bytes()


def test_limit_downloads_the_first_items_and_a_later_run_completes_the_shard(tmp_path):
    rel = write_sample_release(
        tmp_path / "rel", "tgif", "http://127.0.0.1:9", counts={"train": 0, "val": 0, "test": 7}
    )
    root = tmp_path / "root"
    build_catalog("tgif", "test", root=root, source=str(rel))
    r1 = download_split(
        root=root,
        dataset="tgif",
        split="test",
        from_dir=rel / "media",
        limit=3,
        shard_size=5,
        progress=False,
    )
    assert (r1.items, r1.ok) == (3, 3)
    r2 = download_split(
        root=root,
        dataset="tgif",
        split="test",
        from_dir=rel / "media",
        shard_size=5,
        progress=False,
    )
    assert (r2.items, r2.ok, r2.skipped_shards) == (7, 7, 0)
    assert {r["format"] for r in _rows(root, "tgif")} == {"gif"} and len(_status(root, "tgif")) == 7


# -- bad input exits 2, nothing half-written -------------------------------------------
def test_bad_input_exits_2(tmp_path):
    rel = write_sample_release(
        tmp_path / "rel", "mrw", "http://127.0.0.1:9", counts={"train": 0, "val": 0, "test": 3}
    )
    root = tmp_path / "root"
    res = _mrw("download", "--root", root, "--split", "nope", "--metadata", rel)
    assert res.returncode == 2 and "unknown split" in res.stderr and "Traceback" not in res.stderr
    res = _mrw("validate", "--root", root, "--split", "test")
    assert res.returncode == 2 and "no catalog" in res.stderr
    res = _mrw("download", "--root", root, "--split", "test", "--metadata", rel, "--shard-size", 0)
    assert res.returncode == 2 and "--shard-size" in res.stderr
    assert not paths.videos_dir(root, "mrw", "test").exists()
    for opt, value in (
        ("--workers", 0),
        ("--timeout", 0),
        ("--max-bytes", -1),
        ("--retries", -1),
        ("--per-host", 0),
        ("--processes", -1),
    ):
        res = _mrw("download", "--root", root, "--split", "test", "--metadata", rel, opt, value)
        assert res.returncode == 2 and opt in res.stderr, (opt, res.stderr)
    # an unwritable place for the shards: a file where the videos folder should be
    paths.dataset_dir(root, "mrw").mkdir(parents=True, exist_ok=True)  # options come first
    (paths.dataset_dir(root, "mrw") / "videos").write_text("in the way")
    res = _mrw(
        "download",
        "--root",
        root,
        "--split",
        "test",
        "--metadata",
        rel,
        "--from-dir",
        rel / "media",
    )
    assert res.returncode == 2 and "cannot write" in res.stderr and "Traceback" not in res.stderr


def test_missing_catalog_and_missing_from_dir_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no catalog"):
        download_split(root=tmp_path / "r", dataset="mrw", split="val", progress=False)
    with pytest.raises(UsageError, match="from-dir"):
        download_split(
            root=tmp_path / "r",
            dataset="mrw",
            split="val",
            from_dir=tmp_path / "nope",
            progress=False,
        )


def test_no_ffprobe_stops_at_once_with_what_to_install(tmp_path, monkeypatch):
    """Without ffprobe nothing could be checked: one line saying what to install, not a run of
    per-item failures."""
    rel = write_sample_release(
        tmp_path / "rel", "mrw", "http://127.0.0.1:9", counts={"train": 0, "val": 0, "test": 3}
    )
    root = tmp_path / "root"
    bin_dir = tmp_path / "bin"  # python, and nothing of ffmpeg's
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    res = _mrw(
        "download",
        "--root",
        root,
        "--split",
        "test",
        "--metadata",
        rel,
        "--from-dir",
        rel / "media",
        env={**os.environ, "PATH": str(bin_dir)},
    )
    assert res.returncode == 1 and "ffprobe not found on PATH: install ffmpeg" in res.stderr, (
        res.stderr
    )
    assert "Traceback" not in res.stderr
    assert not shards.status_shards(paths.videos_dir(root, "mrw", "test"))
