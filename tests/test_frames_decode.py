"""Decoding and sampling, on real clips made with ffmpeg; also the clip makers and
the video-stage writer that the frames and features tests share."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mrw import catalog, paths, shards
from mrw.download import VIDEO_SCHEMA
from mrw.frames import DecodeError, decode_jpeg, decode_video, encode_jpeg


def make_clip(
    path: Path, fmt: str, fps: float, duration: float, size=(320, 240), colour: str | None = None
) -> dict:
    """A real clip: a solid `colour` or ffmpeg's moving test pattern, as MP4 (H.264) or GIF."""
    w, h = size
    source = (
        f"color=c={colour}:size={w}x{h}:rate={fps}:duration={duration}"
        if colour
        else f"testsrc=size={w}x{h}:rate={fps}:duration={duration}"
    )
    if fmt == "mp4":
        codec = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    else:  # a palette made from the clip itself, so a solid colour is stored exactly, undithered
        codec = ["-vf", "split[a][b];[a]palettegen=stats_mode=single[p];[b][p]paletteuse=new=1"]
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", source, *codec, str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return {
        "path": path,
        "format": fmt,
        "fps": float(fps),
        "duration": float(duration),
        "width": w,
        "height": h,
        "num_frames": round(fps * duration),
    }


def make_jpeg(path: Path, colour: str, size=(640, 480)) -> dict:
    w, h = size
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"color=c={colour}:size={w}x{h}",
            "-frames:v",
            "1",
            "-q:v",
            "2",
            str(path),
        ],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return {
        "path": path,
        "format": "jpg",
        "fps": 0.0,
        "duration": 0.0,
        "width": w,
        "height": h,
        "num_frames": 1,
    }


def video_row(item_id: str, clip: dict, data: bytes | None = None) -> dict:
    data = Path(clip["path"]).read_bytes() if data is None else data
    return {
        "id": item_id,
        "video": data,
        "format": clip["format"],
        "sha256": hashlib.sha256(data).hexdigest(),
        "num_frames": clip["num_frames"],
        "fps": clip["fps"],
        "width": clip["width"],
        "height": clip["height"],
        "duration": clip["duration"],
    }


def write_video_stage(root: Path, dataset: str, split: str, shard_items: list[list[tuple]]):
    """Catalog + video shards, as `mrw download` leaves them.

    `shard_items[i]` lists shard i's items as (id, clip or None, data override); an item whose
    clip is None failed to download: a failed status row and no data row.
    """
    rows, extra = [], catalog.EXTRA_COLUMNS[dataset]
    for items in shard_items:
        for item_id, _clip, _data in items:
            row = {
                "id": item_id,
                "sentences": [f"a clip called {item_id}"],
                "url": f"http://127.0.0.1/{item_id}",
                "protocol_sentences": [0],
            }
            row.update({name: None for name, _ in extra})
            rows.append(row)
    catalog.write_catalog(rows, root, dataset, split)
    videos_dir = paths.videos_dir(root, dataset, split)
    shard_size = max(len(items) for items in shard_items)
    shards.check_manifest(videos_dir, {"stage": "videos", "shard_size": shard_size})
    for index, items in enumerate(shard_items):
        data = [video_row(i, c, d) for i, c, d in items if c is not None]
        status = [
            {
                "id": i,
                "url": f"http://127.0.0.1/{i}",
                "attempts": 1,
                "status": "ok" if c is not None else "failed",
                "error": None if c is not None else "http_404: not found",
            }
            for i, c, _ in items
        ]
        table = pa.Table.from_pylist(data, schema=VIDEO_SCHEMA) if data else None
        shards.write_shard(videos_dir, index, table, status)
    return videos_dir


CLIPS = [  # (format, source fps, duration s, size)
    ("mp4", 30, 2.0, (320, 240)),
    ("mp4", 24, 1.5, (180, 320)),  # portrait: the width becomes the 256 side
    ("mp4", 5, 3.0, (160, 120)),  # slower than 8 fps: every frame
    ("gif", 10, 2.0, (200, 150)),
    ("gif", 4, 2.5, (120, 90)),
    ("gif", 25, 1.2, (96, 96)),
]


@pytest.mark.parametrize("fmt,fps,duration,size", CLIPS)
def test_frame_count_is_fps_times_duration(tmp_path, fmt, fps, duration, size):
    clip = make_clip(tmp_path / f"c.{fmt}", fmt, fps, duration, size)
    video = decode_video(clip["path"].read_bytes(), fmt, fps=8.0, size=256, scratch_dir=tmp_path)
    expected = min(8.0, fps) * duration
    assert abs(len(video.frames) - expected) <= 1, (len(video.frames), expected)
    # timestamps: from the first frame, increasing, never closer than one source frame
    ts = np.array(video.timestamps)
    assert ts[0] == 0.0 and np.all(np.diff(ts) >= 1.0 / fps - 1e-6)
    assert ts[-1] <= duration
    h, w = video.frames[0].shape[:2]
    assert (video.width, video.height) == (w, h) and min(h, w) == 256
    assert abs(max(h, w) / 256 - max(size) / min(size)) < 0.01
    assert not list(tmp_path.glob(".tmp-*")), "the scratch copy is removed"


def test_fps_option_thins_a_faster_clip(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", "mp4", 30, 2.0)
    video = decode_video(clip["path"].read_bytes(), "mp4", fps=4.0, size=64)
    assert abs(len(video.frames) - 8) <= 1
    assert min(video.frames[0].shape[:2]) == 64


@pytest.mark.parametrize("fmt", ["mp4", "gif", "jpg"])
def test_solid_colour_survives_decoding_and_jpeg(tmp_path, fmt):
    colours = {
        "mp4": ("0xDC1E1E", (220, 30, 30)),
        "gif": ("0x1E3CDC", (30, 60, 220)),
        "jpg": ("0x1EB428", (30, 180, 40)),
    }
    name, rgb = colours[fmt]
    if fmt == "jpg":
        clip = make_jpeg(tmp_path / "c.jpg", name)
    else:
        clip = make_clip(tmp_path / f"c.{fmt}", fmt, 10, 1.0, colour=name)
    video = decode_video(clip["path"].read_bytes(), fmt)
    assert len(video.frames) == (1 if fmt == "jpg" else 8)
    for frame in (video.frames[0], video.frames[-1]):
        stored = decode_jpeg(encode_jpeg(frame, quality=90))  # what a frame shard keeps
        mean = stored.reshape(-1, 3).mean(axis=0)
        assert np.all(np.abs(mean - rgb) <= 6), (mean, rgb)
        assert np.abs(stored.astype(int) - rgb).max() <= 16


def test_undecodable_bytes_raise_decode_error(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", "mp4", 10, 1.0)
    with pytest.raises(DecodeError):
        decode_video(b"this is not a video at all" * 100, "mp4", scratch_dir=tmp_path)
    with pytest.raises(DecodeError):
        decode_video(clip["path"].read_bytes()[:2000], "mp4", scratch_dir=tmp_path)
    with pytest.raises(DecodeError):
        decode_video(b"", "gif")
    assert not list(tmp_path.glob(".tmp-*"))


# -- reference sampling: GulpIO's burst and its resize ------------------------------------------
def test_reference_resize_truncates_the_longer_side_as_gulpio_did(tmp_path):
    from mrw.frames import reference_size

    clip = make_clip(tmp_path / "wide.mp4", "mp4", 10, 1.0, size=(322, 194))
    data = clip["path"].read_bytes()
    ref = decode_video(data, "mp4", size=256, sampling="reference")
    native = decode_video(data, "mp4", size=256, sampling="native")
    # 256 * 322 / 194 = 424.907...: GulpIO's int() keeps 424, ffmpeg's scaler rounds to 425
    assert (ref.width, ref.height) == reference_size(322, 194, 256) == (424, 256)
    assert (native.width, native.height) == (425, 256)
    assert ref.frames[0].shape == (256, 424, 3)
    assert reference_size(97, 161, 256) == (256, 424)  # portrait: the height is the longer side


def test_reference_sampling_repeats_the_frames_of_a_slow_clip(tmp_path):
    clip = make_clip(tmp_path / "slow.mp4", "mp4", 4, 2.0, size=(64, 48))
    video = decode_video(clip["path"].read_bytes(), "mp4", fps=8.0, size=64, sampling="reference")
    assert len(video.frames) >= 16 and np.allclose(np.diff(video.timestamps), 0.125)
    native = decode_video(clip["path"].read_bytes(), "mp4", fps=8.0, size=64, sampling="native")
    assert len(native.frames) == 8
