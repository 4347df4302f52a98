"""A corpus of small real-world media, made with the real encoders, and GulpIO's burst of a clip.

Every file is what a tool users meet writes: GIFs by ImageMagick, gifsicle and Pillow, clips by
ffmpeg's H.264, HEVC, VP9 and MPEG-4 part 2 encoders, in the layouts the web serves (moov at the
end or the start, odd sizes, 4:4:4, an audio track, variable frame rate, rotation metadata). The
`media_corpus` fixture builds it once per test session; import it into a test module to use it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

#: frames of the source pattern, and its size; tiny, so the whole corpus builds in seconds
SIZE = (96, 64)
SECONDS = 1.5


@dataclass(frozen=True)
class CorpusClip:
    name: str
    path: Path
    what: str  # the tool and the feature the file stands for
    still: bool = False  # a single-frame image, which a video dataset refuses
    display: tuple[int, int] | None = None  # (width, height) as players show it, rotation applied

    @property
    def format(self) -> str:
        return self.path.suffix.lstrip(".")


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=120, **kw
    )


def _ffmpeg(*args: str) -> None:
    _run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args])


def _pattern(fps: float, size=SIZE, seconds: float = SECONDS) -> list[str]:
    w, h = size
    # testsrc2 makes even sizes only: an odd one is scaled from the next even size
    source = f"testsrc2=size={w + w % 2}x{h + h % 2}:rate={fps}:duration={seconds}"
    return ["-f", "lavfi", "-i", source + (f",scale={w}:{h}" if w % 2 or h % 2 else "")]


def set_mp4_rotation(path: Path, degrees: int) -> None:
    """Write a display matrix into the (one) track header of an MP4, as phones record portrait
    video: coded landscape, shown rotated. ffmpeg 5 no longer writes a `rotate` tag itself."""
    import math
    import struct

    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    version = data[at + 4]
    matrix = at + 8 + (20 if version == 0 else 32) + 8 + 8
    c, s = round(math.cos(math.radians(degrees))), round(math.sin(math.radians(degrees)))
    one = 1 << 16
    struct.pack_into(">9i", data, matrix, c * one, s * one, 0, -s * one, c * one, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))


def _frames_png(out: Path, n: int, size=SIZE) -> list[Path]:
    """`n` distinct frames of a moving pattern as PNG files (the input of the GIF tools)."""
    out.mkdir(parents=True, exist_ok=True)
    w, h = size
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={w}x{h}:rate=10",
        "-frames:v",
        str(n),
        str(out / "f%03d.png"),
    )
    return sorted(out.glob("f*.png"))


def encoders() -> set[str]:
    text = _run(["ffmpeg", "-hide_banner", "-encoders"]).stdout.decode()
    return {m.group(1) for m in re.finditer(r"^ [A-Z.]{6} (\S+)", text, re.M)}


def build_corpus(out: Path) -> dict[str, CorpusClip]:
    """Write every corpus file under `out`; name -> clip."""
    out.mkdir(parents=True, exist_ok=True)
    have = encoders()
    for tool in ("convert", "gifsicle"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (the setup installs it from Debian)")
    missing = {"libx264", "libx265", "libvpx-vp9", "mpeg4", "aac"} - have
    if missing:
        pytest.skip(f"this ffmpeg lacks the encoders {', '.join(sorted(missing))}")
    clips: list[CorpusClip] = []
    work = out / "_work"
    pngs = _frames_png(work / "png", 12)

    def add(name: str, what: str, **kw) -> Path:
        clips.append(CorpusClip(name, out / name, what, **kw))
        return out / name

    # -- GIFs ---------------------------------------------------------------------------------
    _run(
        [
            "convert",
            "-delay",
            "10",
            "-loop",
            "0",
            *map(str, pngs),
            str(add("im.gif", "ImageMagick")),
        ]
    )
    _run(
        [
            "convert",
            "-delay",
            "8",
            "-loop",
            "0",
            "-interlace",
            "GIF",
            *map(str, pngs),
            str(add("im_interlaced.gif", "ImageMagick, interlaced")),
        ]
    )
    # gifsicle: frames with their own palettes merged (local colour tables), optimised, lossy
    singles = []
    for i, p in enumerate(pngs):
        single = work / f"single{i:03d}.gif"
        _run(["convert", str(p), "-colors", str(16 + 8 * i), str(single)])
        singles.append(str(single))
    _run(
        [
            "gifsicle",
            "--no-warnings",
            "-O3",
            "--lossy=80",
            "--delay",
            "10",
            "--loopcount=forever",
            *singles,
            "-o",
            str(add("gifsicle_o3_lossy_local.gif", "gifsicle -O3 --lossy, local colour tables")),
        ]
    )
    _run(
        [
            "gifsicle",
            "--no-warnings",
            "-O3",
            "--colors",
            "64",
            str(out / "im.gif"),
            "-o",
            str(add("gifsicle_o3.gif", "gifsicle -O3 of an ImageMagick GIF")),
        ]
    )
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in pngs]
    # variable durations and zero delays (players show a 0 delay as 100 ms, as does ffmpeg)
    images[0].save(
        add("pillow_durations.gif", "Pillow, variable durations and zero delays"),
        save_all=True,
        append_images=images[1:],
        duration=[40, 100, 0, 250, 0, 60, 120, 0, 30, 200, 90, 0],
        loop=0,
    )
    # transparent frames: a moving square on a transparent background, each frame disposed
    frames = []
    w, h = SIZE
    for i in range(10):
        frame = Image.new("P", SIZE, 0)
        frame.putpalette([0, 0, 0, 220, 40, 40, 40, 200, 60] + [0] * (256 * 3 - 9))
        x = 4 + 7 * i
        frame.paste(1, (x, 8, x + 20, 28))
        frame.paste(2, (w - x - 16, h - 24, w - x, h - 8))
        frames.append(frame)
    frames[0].save(
        add("pillow_transparent_disposal.gif", "Pillow, transparency, disposal to background"),
        save_all=True,
        append_images=frames[1:],
        duration=100,
        loop=0,
        transparency=0,
        disposal=2,
    )
    _run(["convert", str(pngs[0]), str(add("still.gif", "a one-frame GIF", still=True))])

    # -- video ----------------------------------------------------------------------------------
    x264 = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"]
    _ffmpeg(
        *_pattern(25),
        *x264,
        "-bf",
        "3",
        "-g",
        "12",
        str(add("h264_bframes_moov_end.mp4", "H.264 with B-frames, moov at the end")),
    )
    _ffmpeg(
        *_pattern(25),
        *x264,
        "-bf",
        "2",
        "-movflags",
        "+faststart",
        str(add("h264_faststart.mp4", "H.264, moov at the start")),
    )
    _ffmpeg(
        *_pattern(24),
        "-c:v",
        "libx265",
        "-preset",
        "ultrafast",
        "-x265-params",
        "log-level=error",
        "-tag:v",
        "hvc1",
        "-pix_fmt",
        "yuv420p",
        str(add("hevc.mp4", "HEVC (libx265)")),
    )
    vp9 = ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k"]
    _ffmpeg(*_pattern(30), *vp9, str(add("vp9.webm", "VP9 in WebM")))
    _ffmpeg(
        *_pattern(15, size=(161, 97)),
        *vp9,
        str(add("vp9_odd_161x97.webm", "VP9, odd size 161x97", display=(161, 97))),
    )
    _ffmpeg(*_pattern(25), "-c:v", "mpeg4", "-q:v", "5", str(add("mpeg4.mp4", "MPEG-4 part 2")))
    _ffmpeg(
        *_pattern(20, size=(161, 97)),
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-pix_fmt",
        "yuv444p",
        str(add("h264_yuv444_161x97.mp4", "H.264 High 4:4:4, odd size", display=(161, 97))),
    )
    _ffmpeg(
        *_pattern(25),
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency=440:duration={SECONDS}",
        *x264,
        "-c:a",
        "aac",
        "-shortest",
        str(add("h264_audio.mp4", "H.264 with an AAC audio track")),
    )
    # variable frame rate: frame n at n^2/60 s, dense at first (over 8 fps), sparse later
    _ffmpeg(
        *_pattern(10, seconds=1.4),
        "-vf",
        "setpts=N*N/60/TB",
        "-fps_mode",
        "vfr",
        *x264,
        str(add("h264_vfr.mp4", "H.264, variable frame rate")),
    )
    _ffmpeg(
        *_pattern(25, size=(64, 112)),
        *x264,
        str(add("h264_portrait.mp4", "H.264, portrait", display=(64, 112))),
    )
    rotated = add("h264_rotate90.mp4", "H.264 coded landscape, display matrix", display=(64, 112))
    _ffmpeg(*_pattern(25, size=(112, 64)), *x264, str(rotated))
    set_mp4_rotation(rotated, 90)
    _ffmpeg(*_pattern(5, seconds=2.0), *x264, str(add("h264_5fps.mp4", "H.264 at 5 fps")))
    _ffmpeg(*_pattern(60, seconds=1.0), *x264, str(add("h264_60fps.mp4", "H.264 at 60 fps")))
    shutil.rmtree(work)
    return {c.name: c for c in clips}


@pytest.fixture(scope="session")
def media_corpus(tmp_path_factory) -> dict[str, CorpusClip]:
    return build_corpus(tmp_path_factory.mktemp("media-corpus"))


# -- the reference pipeline's frames ------------------------------------------------------------
def gulpio_burst(clip: Path, out_dir: Path, fps: int = 8) -> tuple[list[Path], list[float]]:
    """GulpIO's burst of `clip` (`ffmpeg -i CLIP -q:v 1 -r 8 -f image2 %04d.jpg`, TwentyBN/GulpIO
    `gulpio/utils.py`) with the installed ffmpeg: its JPEG files, and the time of each frame as
    ffmpeg's muxer stamped it (`-debug_ts` only logs), from the first frame."""
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = _run(
        [
            "ffmpeg",
            "-nostdin",
            "-debug_ts",
            "-i",
            str(clip),
            "-q:v",
            "1",
            "-r",
            str(fps),
            "-f",
            "image2",
            str(out_dir / "%04d.jpg"),
        ]
    )
    log = proc.stderr.decode("utf-8", "replace")
    pts = [int(m) for m in re.findall(r"muxer <- type:video pkt_pts:(-?\d+)", log)]
    tb = Fraction(1, fps)  # the image2 muxer takes the output rate as its time base
    files = sorted(out_dir.glob("*.jpg"))
    return files, [float((p - pts[0]) * tb) for p in pts]


def reference_resize(image: np.ndarray, size: int) -> np.ndarray:
    """GulpIO's `resize_by_short_edge`, written out from its rule: shorter side `size`, longer
    side `int(size * long / short)`, OpenCV's default (bilinear) interpolation."""
    import cv2

    h, w = image.shape[:2]
    if h < w:
        return cv2.resize(image, (int(size * (w / float(h))), size))
    return cv2.resize(image, (size, int(size * (h / float(w)))))


def probe_display(path: Path) -> tuple[int, int]:
    """(width, height) of the first video stream with its rotation applied, per ffprobe."""
    proc = _run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height:stream_side_data_list",
            "-of",
            "json",
            str(path),
        ]
    )
    st = json.loads(proc.stdout)["streams"][0]
    rotation = next((int(d.get("rotation", 0)) for d in st.get("side_data_list", [])), 0)
    w, h = int(st["width"]), int(st["height"])
    return (h, w) if rotation % 180 else (w, h)
