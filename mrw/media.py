"""Probe and validate media bytes: what they are, and whether every frame decodes.

`probe_media` sniffs the container from its first bytes, then runs one `ffprobe -count_frames`,
which decodes every frame, so a file that only looks like a video fails here, not three stages
later. Failures are classified: `not_video` (an HTML page, random bytes, no video stream),
`decode_error` (a known container whose frames do not decode), `too_large`, `bad_size`,
`bad_fps`, `too_long`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from mrw.errors import FatalError
from mrw.fetch import looks_like_html


@dataclass(frozen=True)
class MediaLimits:
    """What counts as a sane clip; plain data passed down from the download options."""

    max_bytes: int = 64 * 1024 * 1024
    min_side: int = 8
    max_side: int = 8192
    max_fps: float = 240.0
    max_duration: float = 3600.0
    probe_timeout: float = 120.0


@dataclass(frozen=True)
class MediaInfo:
    format: str
    num_frames: int
    fps: float
    width: int
    height: int
    duration: float


class MediaError(Exception):
    def __init__(self, cls: str, message: str):
        super().__init__(f"{cls}: {message}")
        self.cls, self.message = cls, message


def sniff_format(data: bytes) -> str | None:
    """The container named by the magic bytes, or None."""
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return "mov" if data[8:10] == b"qt" else "mp4"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "webm" if b"webm" in data[:64] else "mkv"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    if data[:3] == b"FLV":
        return "flv"
    if len(data) >= 8 and data[4:8] in (b"moov", b"mdat", b"free", b"wide"):
        return "mov"
    return None


def _rate(text: str | None) -> float:
    try:
        r = Fraction(text)
        return float(r) if r > 0 else 0.0
    except (TypeError, ValueError, ZeroDivisionError):
        return 0.0


#: probe scratch files are `<tmp>/mrw-probe-<pid>-*`, so a later run can clear a killed one's
PROBE_PREFIX = "mrw-probe-"


def remove_stale_probes() -> int:
    """Delete probe scratch files whose process is gone (a killed run's); returns how many."""
    from mrw.shards import remove_stale_scratch

    return remove_stale_scratch(Path(_tmp_dir() or tempfile.gettempdir()), PROBE_PREFIX)


def _tmp_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _probe_fast(path: str, data: bytes, fmt: str) -> MediaInfo | None:
    """In-process decode with OpenCV (no process to start: ~4x less CPU than ffprobe).

    Returns None whenever anything looks off, so that ffprobe gives the verdict and the message:
    an MP4 must deliver every frame its sample table lists; a JPEG must decode and end with its
    end-of-image marker (a truncated JPEG decodes with only a warning)."""
    # FFmpeg's own log lines would land on the user's terminal; ffprobe gives the messages we keep
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    import cv2

    if fmt == "jpeg":
        if data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
            return None
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            return None
        return MediaInfo("jpeg", 1, 0.0, int(img.shape[1]), int(img.shape[0]), 0.0)
    if fmt not in ("mp4", "mov"):
        return None
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            return None
        listed = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        width, height = (
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
        frames = 0
        while cap.grab():  # grab() decodes; only the colour conversion of retrieve() is skipped
            frames += 1
    finally:
        cap.release()
    if frames < 1 or frames != listed or fps <= 0:
        return None
    return MediaInfo(fmt, frames, round(fps, 6), width, height, round(frames / fps, 6))


FFPROBE_MISSING = "ffprobe not found on PATH: install ffmpeg (5.x or newer), which brings it"


def require_ffprobe() -> None:
    """Stop at once, before any work, where media could not be checked."""
    import shutil

    if shutil.which("ffprobe") is None:
        raise FatalError(FFPROBE_MISSING)


def probe_media(
    data: bytes, limits: MediaLimits | None = None, thorough: bool = False
) -> MediaInfo:
    """Probe and decode `data`; raise MediaError with a class when it is not a sane clip.

    MP4 and JPEG are decoded in-process first (`_probe_fast`); everything else, anything that
    looks off there, and every call with `thorough=True` goes through `ffprobe -count_frames`,
    whose decoder also reports concealed errors inside frames."""
    limits = limits or MediaLimits()
    if len(data) > limits.max_bytes:
        raise MediaError("too_large", f"{len(data)} bytes is over the cap of {limits.max_bytes}")
    if not data:
        raise MediaError("not_video", "no bytes")
    fmt = sniff_format(data)
    if fmt is None:
        what = "an HTML page" if looks_like_html(data[:512]) else f"unknown bytes {data[:8]!r}"
        raise MediaError("not_video", f"{what}, not media")
    with tempfile.NamedTemporaryFile(
        prefix=f"{PROBE_PREFIX}{os.getpid()}-", suffix="." + fmt, dir=_tmp_dir()
    ) as fh:
        fh.write(data)
        fh.flush()
        if not thorough:
            fast = _probe_fast(fh.name, data, fmt)
            if fast is not None:
                return _check_limits(fast, limits)
        cmd = [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name,width,height,avg_frame_rate,r_frame_rate,"
            "nb_read_frames,duration:format=format_name,duration",
            "-of",
            "json",
            fh.name,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=limits.probe_timeout)
        except subprocess.TimeoutExpired:
            raise MediaError("decode_error", f"decoding took over {limits.probe_timeout:g} s")
        except FileNotFoundError:
            raise FatalError(FFPROBE_MISSING) from None
    # drop decoder addresses ("[h264 @ 0x55...]") so a status row is the same on every run
    err = " ".join(re.sub(r" @ 0x[0-9a-fA-F]+", "", proc.stderr.decode(errors="replace")).split())
    try:
        info = json.loads(proc.stdout or b"{}")
    except ValueError:
        info = {}
    streams = info.get("streams") or []
    if not streams:
        if proc.returncode != 0 or err:
            raise MediaError(
                "decode_error", f"{fmt} that ffprobe cannot read: {err[:160] or proc.returncode}"
            )
        raise MediaError("not_video", f"{fmt} without a video stream")
    if err:
        raise MediaError("decode_error", f"{fmt} with frames that do not decode: {err[:160]}")
    st = streams[0]
    frames = int(st.get("nb_read_frames") or 0)
    if frames < 1:
        raise MediaError("decode_error", f"{fmt} with no decodable frame")
    width, height = int(st.get("width") or 0), int(st.get("height") or 0)
    if fmt in ("jpeg", "png"):
        return _check_limits(MediaInfo(fmt, 1, 0.0, width, height, 0.0), limits)
    duration = _rate(st.get("duration")) or _rate((info.get("format") or {}).get("duration"))
    fps = _rate(st.get("avg_frame_rate")) or (
        frames / duration if duration > 0 else _rate(st.get("r_frame_rate"))
    )
    if frames == 1 and duration == 0:
        fps = 0.0
    if fmt == "webm" and st.get("codec_name") not in ("vp8", "vp9", "av1"):
        fmt = "mkv"
    return _check_limits(
        MediaInfo(fmt, frames, round(fps, 6), width, height, round(duration, 6)), limits
    )


def _check_limits(info: MediaInfo, limits: MediaLimits) -> MediaInfo:
    w, h = info.width, info.height
    if not (limits.min_side <= min(w, h) and max(w, h) <= limits.max_side):
        raise MediaError("bad_size", f"{w}x{h} is outside {limits.min_side}..{limits.max_side}")
    if info.fps > limits.max_fps:
        raise MediaError("bad_fps", f"{info.fps:.1f} frames per second is over {limits.max_fps:g}")
    if info.duration > limits.max_duration:
        raise MediaError("too_long", f"{info.duration:.0f} s is over {limits.max_duration:g} s")
    return info
