"""`mrw.media`: the download-time check (complete container parse, first frame decoded) against
real clips made with ffmpeg, the thorough check of `mrw validate`, hostile geometry, and status
rows that are the same on every run."""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mrw import paths, shards
from mrw.catalog import write_catalog
from mrw.cli import main
from mrw.download import download_split
from mrw.media import MediaError, MediaLimits, probe_media

REPO = Path(__file__).resolve().parent.parent


def ffmpeg(*args: str) -> None:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, stdin=subprocess.DEVNULL
    )


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, bytes]:
    """Real media: H.264 with B-frames (index first and last), a GIF, a JPEG, a PNG, audio only."""
    d = tmp_path_factory.mktemp("clips")
    src = "testsrc=size=160x120:rate=12:duration=2"
    x264 = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-threads", "1"]
    ffmpeg("-f", "lavfi", "-i", src, *x264, "-movflags", "+faststart", str(d / "fast.mp4"))
    ffmpeg("-f", "lavfi", "-i", src, *x264, str(d / "tail.mp4"))  # moov after mdat
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=2", str(d / "c.gif")
    )  # fmt: skip
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48", "-frames:v", "1", str(d / "c.jpg"))
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48", "-frames:v", "1", str(d / "c.png"))
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(d / "audio.mp4"))
    for name, codec in (("c.mkv", x264), ("c.flv", x264), ("c.avi", ["-c:v", "mpeg4"])):
        ffmpeg("-f", "lavfi", "-i", src, *codec, str(d / name))
    ffmpeg("-f", "lavfi", "-i", src, "-c:v", "libvpx", "-b:v", "200k", str(d / "c.webm"))
    return {p.name: p.read_bytes() for p in d.iterdir()}


def _ffprobe_frames(data: bytes, tmp_path: Path) -> int:
    p = tmp_path / "probe.bin"
    p.write_bytes(data)
    out = subprocess.run(
        [
            *("ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0"),
            *("-show_entries", "stream=nb_read_frames", "-of", "json", str(p)),
        ],
        capture_output=True,
        check=True,
    ).stdout
    return int(json.loads(out)["streams"][0]["nb_read_frames"])


def _packets(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of every video packet, as the MP4's sample table places them."""
    import io

    import av

    with av.open(io.BytesIO(data)) as c:
        return [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size]


def mid_corrupted(data: bytes) -> bytes:
    """The same container with the payload of packets in the middle replaced by noise."""
    out = bytearray(data)
    pk = _packets(data)
    rng = random.Random(5)
    for pos, size in pk[len(pk) // 2 : len(pk) // 2 + 3]:
        out[pos + 4 : pos + size] = rng.randbytes(size - 4)
    return bytes(out)


def _classify(data: bytes, **kw) -> str:
    with pytest.raises(MediaError) as e:
        probe_media(data, **kw)
    return e.value.cls


# -- what the download-time check finds ------------------------------------------------------------
@pytest.mark.parametrize("name", ["fast.mp4", "tail.mp4", "c.gif"])
def test_num_frames_is_the_frame_count_a_full_decode_gives(clips, name, tmp_path):
    info = probe_media(clips[name])
    fps = 12 if name.endswith("mp4") else 10
    assert info.num_frames == _ffprobe_frames(clips[name], tmp_path) == 2 * fps
    assert (info.width, info.height) == (160, 120)
    assert info.fps == pytest.approx(fps, rel=0.02)
    assert info.duration == pytest.approx(2.0, abs=0.05)
    assert info.format == name.rsplit(".", 1)[1]
    thorough = probe_media(clips[name], thorough=True)
    assert thorough.num_frames == info.num_frames


@pytest.mark.parametrize("name", ["c.mkv", "c.webm", "c.flv", "c.avi"])
def test_other_containers_are_read_to_the_end(clips, name, tmp_path):
    """Their demuxers drop a cut-off last packet silently: the container's sizes tell."""
    data = clips[name]
    info = probe_media(data)
    assert info.format == name.rsplit(".", 1)[1] and (info.width, info.height) == (160, 120)
    assert info.num_frames == _ffprobe_frames(data, tmp_path) == 24
    assert info.fps == pytest.approx(12, rel=0.02)
    for keep in (len(data) // 2, len(data) - 30):
        assert _classify(data[:keep]) == "truncated", keep


def test_still_images_are_one_frame(clips):
    for name, fmt in (("c.jpg", "jpeg"), ("c.png", "png")):
        info = probe_media(clips[name])
        assert (info.format, info.num_frames, info.width, info.height) == (fmt, 1, 64, 48)


def test_truncation_is_found_from_the_index(clips):
    fast, gif = clips["fast.mp4"], clips["c.gif"]
    assert _classify(fast[: len(fast) * 2 // 3]) == "truncated"
    assert _classify(fast[: len(fast) - 1]) == "truncated"  # the last packet one byte short
    assert _classify(gif[: len(gif) // 2]) == "truncated"
    assert _classify(gif[:400]) == "truncated"
    assert _classify(clips["c.jpg"][:-200]) == "truncated"
    assert _classify(clips["c.png"][:-30]) == "truncated"
    tail = clips["tail.mp4"]  # the index comes last: cut inside it, or gone altogether
    assert _classify(tail[: len(tail) - 100]) == "truncated"
    assert _classify(tail[: len(tail) // 2]) == "decode_error"


def test_other_failure_classes(clips):
    assert _classify(b"<!DOCTYPE html><html><body>gone</body></html>") == "not_video"
    assert _classify(random.Random(1).randbytes(4096)) == "not_video"
    assert _classify(clips["audio.mp4"]) == "not_video"
    assert _classify(clips["fast.mp4"][:48] + random.Random(2).randbytes(5000)) == "decode_error"
    assert _classify(clips["fast.mp4"], limits=MediaLimits(max_bytes=1000)) == "too_large"
    assert _classify(clips["fast.mp4"], limits=MediaLimits(max_duration=1.0)) == "too_long"
    assert _classify(clips["fast.mp4"], limits=MediaLimits(max_fps=5)) == "bad_fps"
    assert _classify(clips["c.gif"], limits=MediaLimits(max_side=100)) == "bad_size"
    assert _classify(clips["fast.mp4"], limits=MediaLimits(max_pixels=160 * 120 - 1)) == "bad_size"


def test_a_broken_first_frame_is_a_decode_error(clips):
    data = bytearray(clips["fast.mp4"])
    pos, size = _packets(bytes(data))[0]
    data[pos + 4 : pos + size] = random.Random(3).randbytes(size - 4)
    assert _classify(bytes(data)) == "decode_error"


def test_a_clip_damaged_in_the_middle_passes_the_download_check_not_the_thorough_one(clips):
    bad = mid_corrupted(clips["fast.mp4"])
    assert probe_media(bad).num_frames == 24  # the container is whole, the first frame decodes
    with pytest.raises(MediaError, match="decode_error: mp4 with frames that do not decode"):
        probe_media(bad, thorough=True)


def test_the_download_check_runs_in_process(clips, monkeypatch, tmp_path):
    """No ffprobe (nor any other program) is needed to check an item at download time."""
    monkeypatch.setenv("PATH", str(tmp_path))
    for name in ("fast.mp4", "tail.mp4", "c.gif", "c.jpg", "c.png"):
        assert probe_media(clips[name]).num_frames >= 1
    assert _classify(clips["c.gif"][:500]) == "truncated"


# -- hostile geometry: refused from the header, nothing decoded --------------------------------------
def tiny_gif(screen=(1, 1), frame_at=(0, 0)) -> bytes:
    """A valid one-pixel GIF whose logical screen and frame position are whatever is asked."""
    head = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    image = b"\x2c" + struct.pack("<HHHHB", *frame_at, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return head + image + b"\x3b"


def test_a_huge_logical_screen_is_refused_before_any_decode(tmp_path):
    """Five 16000x16000 GIFs of 30 bytes each: `bad_size`, and no process (this one or a
    child) grows by anything like the 1 GB canvas a decode of one of them would take."""
    assert probe_media(tiny_gif((16, 16))).num_frames == 1
    assert _classify(tiny_gif((16000, 16000))) == "bad_size"
    assert _classify(tiny_gif((16, 16), frame_at=(15990, 0))) == "bad_size"
    script = tmp_path / "probe_bombs.py"
    script.write_text(
        "import resource, struct, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from mrw.media import MediaError, probe_media\n"
        "from test_media import tiny_gif\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for _ in range(5):\n"
        "    try:\n"
        "        probe_media(tiny_gif((16000, 16000)))\n"
        "    except MediaError as e:\n"
        "        assert e.cls == 'bad_size', e\n"
        "self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(self_kib, child_kib)\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    self_kib, child_kib = map(int, out.stdout.split())
    assert self_kib < 64 * 1024 and child_kib < 64 * 1024, (self_kib, child_kib)


def test_still_images_declaring_a_huge_size_are_refused_from_the_header(clips, capfd):
    jpeg = bytearray(clips["c.jpg"])
    sof = jpeg.find(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    png = bytearray(clips["c.png"])
    png[16:24] = struct.pack(">II", 60000, 60000)
    assert _classify(bytes(jpeg)) == _classify(bytes(png)) == "bad_size"
    assert capfd.readouterr().err == ""  # no decompression-bomb warning from Pillow either
    # bytes after the end-of-image marker (camera trailers) are not a truncation
    assert probe_media(clips["c.jpg"] + b"TRAILER" * 10).num_frames == 1


def test_the_thorough_check_refuses_a_huge_screen_before_ffprobe(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # were ffprobe reached, this would be FatalError
    assert _classify(tiny_gif((16000, 16000)), thorough=True) == "bad_size"


# -- the same status rows on every run ---------------------------------------------------------------
def _release(folder: Path, clips: dict[str, bytes]) -> list[dict]:
    """Items on disk for `--from-dir`: good clips and every kind of damaged one."""
    fast = clips["fast.mp4"]
    media = {
        "good": fast,
        "gif": clips["c.gif"],
        "cut": fast[: len(fast) // 2],
        "corrupt": fast[:48] + random.Random(2).randbytes(6000),
        "html": b"<html><body>removed</body></html>",
        "middle": mid_corrupted(fast),
        "huge": tiny_gif((16000, 16000)),
        "tailcut": clips["tail.mp4"][: len(clips["tail.mp4"]) // 2],
    }
    folder.mkdir(parents=True, exist_ok=True)
    for item_id, data in media.items():
        ext = "gif" if data[:3] == b"GIF" else "mp4"
        (folder / f"{item_id}.{ext}").write_bytes(data)
    return [
        {
            "id": i,
            "sentences": ["a clip"],
            "url": f"http://127.0.0.1/{i}",
            "protocol_sentences": [0],
        }
        for i in media
    ]


def _status(root: Path) -> dict:
    return {
        r["id"]: r for r in shards.read_status(paths.videos_dir(root, "mrw", "test")).to_pylist()
    }


def test_two_runs_give_byte_identical_status_files(clips, tmp_path):
    items = _release(tmp_path / "media", clips)
    stages = []
    for run in ("a", "b"):
        root = tmp_path / run
        write_catalog(items, root, "mrw", "test")
        download_split(
            root=root, dataset="mrw", split="test", from_dir=tmp_path / "media", progress=False
        )
        stages.append(paths.videos_dir(root, "mrw", "test"))
    status = _status(tmp_path / "a")
    assert {i: (r["error"] or "ok").split(":")[0] for i, r in status.items()} == {
        "good": "ok",
        "gif": "ok",
        "cut": "truncated",
        "corrupt": "decode_error",
        "html": "not_video",
        "middle": "ok",
        "huge": "bad_size",
        "tailcut": "decode_error",
    }
    for r in status.values():
        assert "mrw-probe" not in (r["error"] or "") and " 0x" not in (r["error"] or "")
    a, b = (
        {p.name: p.read_bytes() for p in sorted(s.rglob("*.parquet"))} for s in stages
    )  # fmt: skip
    assert a == b


def test_a_clip_damaged_in_the_middle_fails_validate_and_extract_frames(clips, tmp_path):
    items = [r for r in _release(tmp_path / "media", clips) if r["id"] in ("good", "middle")]
    root = tmp_path / "root"
    write_catalog(items, root, "mrw", "test")
    report = download_split(
        root=root, dataset="mrw", split="test", from_dir=tmp_path / "media", progress=False
    )
    assert report.ok == 2  # the download checks what it can without decoding every frame
    res = subprocess.run(
        [sys.executable, "-m", "mrw.cli", "validate", "--root", str(root), "--split", "test"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert res.returncode == 1 and "decode: 1" in res.stdout and "'middle'" in res.stdout
    runs = []
    for _ in range(2):
        result = CliRunner().invoke(
            main, ["extract-frames", "--root", str(root), "--split", "test", "--workers", "1"]
        )
        assert result.exit_code == 0, result.output
        stage = paths.frames_dir(root, "mrw", "test")
        runs.append(hashlib.sha256(shards.status_path(stage, 0).read_bytes()).hexdigest())
        rows = {r["id"]: r for r in pq.read_table(shards.status_path(stage, 0)).to_pylist()}
        shards.status_path(stage, 0).unlink()
        shards.data_path(stage, 0).unlink()
    assert rows["good"]["status"] == "ok"
    assert rows["middle"]["status"] == "failed"
    assert rows["middle"]["error"].startswith("decode_error: frames that do not decode: ")
    assert ".tmp-" not in rows["middle"]["error"] and " 0x" not in rows["middle"]["error"]
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00\x00\x18ftypmp42 broken" * 40,  # an MP4 header, then no index
        b"GIF89a" + b"\x00" * 50,
        b"\x1a\x45\xdf\xa3" + b"\x00" * 100,  # a Matroska magic, then nothing
    ],
)
@pytest.mark.parametrize("thorough", [False, True])
def test_failure_messages_name_no_scratch_file(data, thorough):
    messages = set()
    for _ in range(2):
        with pytest.raises(MediaError) as e:
            probe_media(data, thorough=thorough)
        messages.add(str(e.value))
    assert len(messages) == 1
    assert "mrw-probe" not in messages.pop()
