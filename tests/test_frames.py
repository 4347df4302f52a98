"""`mrw extract-frames`: video shards -> frame shards, atomic and resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from media_corpus import gulpio_burst
from test_frames_decode import make_clip, make_jpeg, write_video_stage

from mrw import paths, shards
from mrw.cli import main
from mrw.frames import FRAMES_SCHEMA, decode_jpeg

REPO = Path(__file__).resolve().parent.parent


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def video_stage(tmp_path, root):
    """Two video shards: MP4 and GIF clips, one failed download, one undecodable file."""
    red = make_clip(tmp_path / "red.mp4", "mp4", 30, 2.0, colour="0xDC1E1E")
    pattern = make_clip(tmp_path / "pattern.gif", "gif", 10, 1.5, size=(200, 150))
    slow = make_clip(tmp_path / "slow.mp4", "mp4", 5, 2.0, size=(120, 160))
    shard_items = [
        [("v0", red, None), ("v1", None, None), ("v2", pattern, None)],
        [("v3", slow, None), ("v4", red, b"\x00\x00\x00\x18ftypmp42 broken" * 40)],
    ]
    write_video_stage(root, "mrw", "test", shard_items)
    return {"red": red, "pattern": pattern, "slow": slow}


def read_stage(stage_dir: Path) -> dict:
    """Every file of a stage folder, as bytes (manifest included)."""
    return {
        str(p.relative_to(stage_dir)): p.read_bytes()
        for p in sorted(stage_dir.rglob("*"))
        if p.is_file()
    }


def test_frame_shards_follow_video_shards(tmp_path, root, video_stage):
    result = cli("extract-frames", "--root", root, "--split", "test")
    assert result.exit_code == 0, result.output
    stage = paths.frames_dir(root, "mrw", "test")
    assert [p.name for p in shards.data_shards(stage)] == [
        "shard-00000.parquet",
        "shard-00001.parquet",
    ]
    s0 = pq.read_table(shards.data_path(stage, 0))
    assert s0.schema.equals(FRAMES_SCHEMA)
    jpeg_column = pq.ParquetFile(shards.data_path(stage, 0)).metadata.row_group(0).column(1)
    assert jpeg_column.compression == "UNCOMPRESSED"  # JPEG bytes: no second codec
    assert s0.column("id").to_pylist() == ["v0", "v2"]  # v1 failed to download: no row
    status = shards.read_status(stage).to_pylist()
    by_id = {r["id"]: r for r in status}
    assert sorted(by_id) == ["v0", "v2", "v3", "v4"]
    assert by_id["v0"]["status"] == "ok" and by_id["v0"]["url"] == "http://127.0.0.1/v0"
    assert by_id["v4"]["status"] == "failed" and by_id["v4"]["error"].startswith("decode_error: ")

    rows = {
        r["id"]: r
        for r in pq.read_table(shards.data_path(stage, 0)).to_pylist()
        + pq.read_table(shards.data_path(stage, 1)).to_pylist()
    }
    assert set(rows) == {"v0", "v2", "v3"}
    # reference sampling (the default): as many frames as GulpIO's burst of the same file
    for item_id, clip in (
        ("v0", video_stage["red"]),
        ("v2", video_stage["pattern"]),
        ("v3", video_stage["slow"]),
    ):
        row = rows[item_id]
        assert row["num_frames"] == len(gulpio_burst(clip["path"], tmp_path / item_id)[0])
        assert len(row["frames"]) == len(row["timestamps"]) == row["num_frames"]
        first = decode_jpeg(row["frames"][0])
        assert first.shape == (row["height"], row["width"], 3)
        assert min(row["width"], row["height"]) == 256
    red = decode_jpeg(rows["v0"]["frames"][5]).reshape(-1, 3)
    assert np.all(np.abs(red.mean(axis=0) - (220, 30, 30)) <= 6)
    assert rows["v3"]["width"] == 256 and rows["v3"]["height"] == 341  # portrait 120x160

    manifest = json.loads((stage / "_stage.json").read_text())
    assert manifest["stage"] == "frames" and manifest["fps"] == 8.0 and manifest["size"] == 256
    assert manifest["quality"] == 90 and manifest["shard_size"] == 3
    assert manifest["sampling"] == "reference" and "GulpIO" in manifest["sampling_rule"]


def test_native_sampling_keeps_each_frame_of_a_slow_clip_once(root, video_stage):
    result = cli("extract-frames", "--root", root, "--split", "test", "--sampling", "native")
    assert result.exit_code == 0, result.output
    stage = paths.frames_dir(root, "mrw", "test")
    rows = {r["id"]: r for r in pq.read_table(shards.data_path(stage, 1)).to_pylist()}
    assert rows["v3"]["num_frames"] == 10  # 5 fps for 2 s: no frame repeated
    assert np.allclose(np.diff(rows["v3"]["timestamps"]), 0.2)
    manifest = json.loads((stage / "_stage.json").read_text())
    assert manifest["sampling"] == "native" and manifest["resize"] == "shorter side, bicubic"
    other = cli("extract-frames", "--root", root, "--split", "test")
    assert other.exit_code == 2 and "other settings (" in other.output
    assert "sampling" in other.output


def test_rerun_skips_complete_shards_and_refuses_other_settings(root, video_stage):
    assert cli("extract-frames", "--root", root, "--split", "test").exit_code == 0
    stage = paths.frames_dir(root, "mrw", "test")
    before = read_stage(stage)
    mtimes = {p: p.stat().st_mtime_ns for p in stage.rglob("*.parquet")}
    again = cli("extract-frames", "--root", root, "--split", "test")
    assert again.exit_code == 0 and "0 shards written, 2 already complete" in again.output
    assert read_stage(stage) == before
    assert {p: p.stat().st_mtime_ns for p in stage.rglob("*.parquet")} == mtimes

    other = cli("extract-frames", "--root", root, "--split", "test", "--fps", "4")
    assert other.exit_code == 2
    assert "other settings (fps)" in other.output and "Traceback" not in other.output
    assert read_stage(stage) == before


def test_a_deleted_shard_is_redone_identically(root, video_stage):
    assert cli("extract-frames", "--root", root, "--split", "test").exit_code == 0
    stage = paths.frames_dir(root, "mrw", "test")
    before = read_stage(stage)
    shards.status_path(stage, 1).unlink()  # as if killed between data and status
    (stage / ".tmp-shard-00001.parquet.123.abcd").write_bytes(b"half-written")
    result = cli("extract-frames", "--root", root, "--split", "test")
    assert result.exit_code == 0 and "1 shards written, 1 already complete" in result.output
    assert read_stage(stage) == before


def test_coco_images_are_one_frame_items(tmp_path, root):
    blue = make_jpeg(tmp_path / "blue.jpg", "0x1E3CDC", size=(640, 480))
    write_video_stage(root, "coco", "val", [[("391895", blue, None), ("522418", blue, None)]])
    assert (
        cli("extract-frames", "--root", root, "--dataset", "coco", "--split", "val").exit_code == 0
    )
    table = pq.read_table(shards.data_path(paths.frames_dir(root, "coco", "val"), 0))
    for row in table.to_pylist():
        assert row["num_frames"] == 1 and row["timestamps"] == [0.0]
        assert (row["width"], row["height"]) == (341, 256)
        assert np.all(np.abs(decode_jpeg(row["frames"][0]).mean(axis=(0, 1)) - (30, 60, 220)) <= 6)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--fps", "0"], "--fps must be a positive number"),
        (["--size", "4"], "--size must be between"),
        (["--quality", "101"], "--quality must be between 1 and 100"),
        (["--workers", "0"], "--workers must be a positive integer"),
    ],
)
def test_bad_options_exit_2(root, video_stage, args, message):
    result = cli("extract-frames", "--root", root, "--split", "test", *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not paths.frames_dir(root, "mrw", "test").exists()


def test_no_video_shards_exit_2_naming_the_command(root):
    result = cli("extract-frames", "--root", root, "--split", "valid")
    assert result.exit_code == 2
    assert "no video shards for mrw/val" in result.output and "mrw download" in result.output


def _run_cli(args, env):
    return subprocess.Popen(
        [sys.executable, "-m", "mrw.cli", *map(str, args)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def kill_when_first_shard_lands(args, stage_dir: Path, total: int) -> None:
    """Start the command, SIGKILL it as soon as one shard is complete, check it was mid-way."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = _run_cli(args, env)
    deadline = time.monotonic() + 120
    while not shards.status_shards(stage_dir) and proc.poll() is None:
        assert time.monotonic() < deadline, "no shard appeared"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(shards.status_shards(stage_dir))
    assert 1 <= done < total, f"the kill should land mid-run ({done} of {total} shards done)"


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, video_stage):
    clips = [video_stage["red"], video_stage["pattern"], video_stage["slow"]]
    items = [[(f"v{s}", clips[s % 3], None)] for s in range(6)]
    roots = {name: tmp_path / name for name in ("whole", "killed")}
    for r in roots.values():
        write_video_stage(r, "tgif", "train", items)
    args = ["extract-frames", "--dataset", "tgif", "--split", "train", "--workers", "1"]

    assert cli(*args, "--root", roots["whole"]).exit_code == 0
    stage = paths.frames_dir(roots["killed"], "tgif", "train")
    kill_when_first_shard_lands([*args, "--root", roots["killed"]], stage, total=6)
    resumed = cli(*args, "--root", roots["killed"])
    assert resumed.exit_code == 0, resumed.output
    assert read_stage(stage) == read_stage(paths.frames_dir(roots["whole"], "tgif", "train"))
