"""Every encoder's media downloads, validates and extracts, sampled as GulpIO's burst sampled it.

The corpus (`media_corpus.py`) is made by the real tools; the clips are served on 127.0.0.1 from
an MRW release in the official layout and go through `download`, `validate` and `extract-frames`
(reference sampling, the default). Each clip's frames are then compared with the burst that
GulpIO ran, `ffmpeg -i CLIP -q:v 1 -r 8 -f image2 %04d.jpg`, run here with the installed ffmpeg.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from media_corpus import gulpio_burst, media_corpus, probe_display, reference_resize

from mrw import paths, shards
from mrw.cli import main
from mrw.demo import SampleServer
from mrw.download import download_split
from mrw.frames import decode_jpeg, extract_frames
from mrw.releases import build_catalog
from mrw.validate import validate_split

__all__ = ["media_corpus"]  # the fixture, imported for pytest

#: largest mean absolute difference (of 255) between a stored frame and the burst's JPEG, two
#: JPEG encodings (quality 90 here; -q:v 1 and 4:2:0 chroma there) of the same decoded frame. On
#: luma, the same frame differs by at most ~1.7 on this corpus and the nearest other frame of a
#: clip by at least ~3.2; on colour, the burst's halved chroma of tiny frames adds up to ~6.
LUMA_TOLERANCE = 2.5
RGB_TOLERANCE = 8.0


def _luma(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)


def _item_id(name: str) -> str:
    return name.replace(".", "_")


def write_release(folder: Path, base_url: str, names: list[str]) -> Path:
    """An MRW release in the official layout whose videos are the corpus files."""
    (folder / "split").mkdir(parents=True, exist_ok=True)
    records = [
        {
            "id": _item_id(n),
            "sentence": f"MRW my video is {n}",
            "images": {"mp4_url": f"{base_url}/media/{n}"},
        }
        for n in names
    ]
    (folder / "mrw-v1.0.json").write_text(json.dumps(records))
    for split in ("train", "valid"):
        (folder / "split" / f"{split}.tsv").write_text("")
    (folder / "split" / "test.tsv").write_text("".join(_item_id(n) + "\n" for n in names))
    return folder


@pytest.fixture(scope="module")
def corpus_run(media_corpus, tmp_path_factory):
    base = tmp_path_factory.mktemp("corpus-run")
    served = base / "served" / "media"
    served.mkdir(parents=True)
    for clip in media_corpus.values():
        shutil.copy(clip.path, served / clip.name)
    root = base / "root"
    with SampleServer(base / "served") as srv:
        rel = write_release(base / "rel", srv.url, sorted(media_corpus))
        build_catalog("mrw", "test", root=root, source=str(rel))
        download = download_split(
            root=root,
            dataset="mrw",
            split="test",
            workers=4,
            shard_size=8,
            timeout=60.0,
            retries=0,
            progress=False,
        )
    validation = validate_split(root=root, dataset="mrw", split="test", workers=2)
    frames = extract_frames(root=root, dataset="mrw", split="test", workers=2, progress=False)
    status = {
        r["id"]: r for r in shards.read_status(paths.videos_dir(root, "mrw", "test")).to_pylist()
    }
    stage = paths.frames_dir(root, "mrw", "test")
    rows = {r["id"]: r for f in shards.data_shards(stage) for r in pq.read_table(f).to_pylist()}
    return {
        "root": root,
        "download": download,
        "validation": validation,
        "frames": frames,
        "status": status,
        "rows": rows,
        "clips": {_item_id(n): c for n, c in media_corpus.items()},
    }


def test_every_clip_downloads_and_validates_and_a_still_gif_is_not_animated(corpus_run):
    clips, status = corpus_run["clips"], corpus_run["status"]
    assert set(status) == set(clips) and len(clips) >= 20
    for item_id, clip in clips.items():
        row = status[item_id]
        if clip.still:
            assert row["status"] == "failed" and row["error"].startswith("not_animated:"), row
        else:
            assert row["status"] == "ok", (clip.what, row)
    assert corpus_run["validation"].ok, corpus_run["validation"].format()
    stage = paths.videos_dir(corpus_run["root"], "mrw", "test")
    stored = {r["id"]: r for f in shards.data_shards(stage) for r in pq.read_table(f).to_pylist()}
    for item_id, row in stored.items():
        assert row["video"] == clips[item_id].path.read_bytes()
        assert row["num_frames"] >= 2
    assert corpus_run["frames"].items_failed == 0
    assert set(corpus_run["rows"]) == {i for i, c in clips.items() if not c.still}


def test_reference_sampling_equals_the_gulpio_burst(corpus_run, tmp_path):
    clips, rows = corpus_run["clips"], corpus_run["rows"]
    checked = 0
    for item_id, row in sorted(rows.items()):
        clip = clips[item_id]
        files, times = gulpio_burst(clip.path, tmp_path / item_id)
        assert row["num_frames"] == len(files) == len(times), (clip.what, row["num_frames"])
        assert np.allclose(row["timestamps"], times, atol=1e-6), (clip.what, row["timestamps"])
        for k, (ours, theirs) in enumerate(zip(row["frames"], files)):
            mine = decode_jpeg(ours)
            ref = reference_resize(decode_jpeg(theirs.read_bytes()), 256)
            assert mine.shape == ref.shape, (clip.what, k, mine.shape, ref.shape)
            rgb = float(np.abs(mine.astype(np.float32) - ref).mean())
            luma = float(np.abs(_luma(mine) - _luma(ref)).mean())
            assert luma <= LUMA_TOLERANCE and rgb <= RGB_TOLERANCE, (clip.what, k, luma, rgb)
        checked += 1
    assert checked == len(clips) - 1  # every clip but the still GIF


def test_slow_clips_repeat_frames_and_fast_ones_drop_them(corpus_run):
    rows = corpus_run["rows"]
    slow, fast = rows["h264_5fps_mp4"], rows["h264_60fps_mp4"]
    # 10 frames in 2 s, and 60 frames in 1 s, become about 8 a second (ffmpeg's rounding at the
    # end adds one or two; the burst test above holds the exact counts)
    assert 16 <= slow["num_frames"] <= 18 and 8 <= fast["num_frames"] <= 10
    for row in (slow, fast):
        assert np.allclose(np.diff(row["timestamps"]), 0.125)
    first, second = decode_jpeg(slow["frames"][0]), decode_jpeg(slow["frames"][1])
    assert np.abs(first.astype(int) - second.astype(int)).mean() < 2.0  # the 0.2 s frame, twice


def test_frames_keep_the_clips_orientation(corpus_run):
    clips, rows = corpus_run["clips"], corpus_run["rows"]
    for item_id, row in rows.items():
        w, h = probe_display(clips[item_id].path)
        if clips[item_id].display:
            assert (w, h) == clips[item_id].display
        expected = reference_resize(np.zeros((h, w, 1), np.uint8), 256).shape[:2]
        assert (row["height"], row["width"]) == expected, (item_id, row["width"], row["height"])
        assert decode_jpeg(row["frames"][0]).shape[:2] == expected
    rotated = rows["h264_rotate90_mp4"]
    assert rotated["height"] > rotated["width"]  # coded 112x64, shown 64x112


def test_allow_still_keeps_a_still_gif(media_corpus, tmp_path):
    served = tmp_path / "served" / "media"
    served.mkdir(parents=True)
    shutil.copy(media_corpus["still.gif"].path, served / "still.gif")
    shutil.copy(media_corpus["im.gif"].path, served / "im.gif")
    with SampleServer(tmp_path / "served") as srv:
        rel = write_release(tmp_path / "rel", srv.url, ["im.gif", "still.gif"])
        for flag, expected in (([], "failed"), (["--allow-still"], "ok")):
            root = tmp_path / f"root{len(flag)}"
            res = CliRunner().invoke(
                main,
                ["download", "--root", str(root), "--split", "test", "--metadata", str(rel), *flag],
            )
            assert res.exit_code == 0, res.output
            status = {
                r["id"]: r
                for r in shards.read_status(paths.videos_dir(root, "mrw", "test")).to_pylist()
            }
            assert status["im_gif"]["status"] == "ok"
            assert status["still_gif"]["status"] == expected, status["still_gif"]
            if flag:
                manifest = shards.read_manifest(paths.videos_dir(root, "mrw", "test"))
                assert manifest["allow_still"] is True
            else:
                assert "not_animated: 1" in res.output
