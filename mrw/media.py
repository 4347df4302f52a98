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


def _tmp_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def probe_media(data: bytes, limits: MediaLimits | None = None) -> MediaInfo:
    """Probe and fully decode `data`; raise MediaError with a class when it is not a sane clip."""
    limits = limits or MediaLimits()
    if len(data) > limits.max_bytes:
        raise MediaError("too_large", f"{len(data)} bytes is over the cap of {limits.max_bytes}")
    if not data:
        raise MediaError("not_video", "no bytes")
    fmt = sniff_format(data)
    if fmt is None:
        what = "an HTML page" if looks_like_html(data[:512]) else f"unknown bytes {data[:8]!r}"
        raise MediaError("not_video", f"{what}, not media")
    with tempfile.NamedTemporaryFile(prefix="mrw-probe-", suffix="." + fmt, dir=_tmp_dir()) as fh:
        fh.write(data)
        fh.flush()
        cmd = ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
               "-show_entries", "stream=codec_name,width,height,avg_frame_rate,r_frame_rate,"
               "nb_read_frames,duration:format=format_name,duration", "-of", "json", fh.name]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=limits.probe_timeout)
        except subprocess.TimeoutExpired:
            raise MediaError("decode_error", f"decoding took over {limits.probe_timeout:g} s")
    # drop decoder addresses ("[h264 @ 0x55...]") so a status row is the same on every run
    err = " ".join(re.sub(r" @ 0x[0-9a-fA-F]+", "", proc.stderr.decode(errors="replace")).split())
    try:
        info = json.loads(proc.stdout or b"{}")
    except ValueError:
        info = {}
    streams = info.get("streams") or []
    if not streams:
        if proc.returncode != 0 or err:
            raise MediaError("decode_error", f"{fmt} that ffprobe cannot read: {err[:160] or proc.returncode}")
        raise MediaError("not_video", f"{fmt} without a video stream")
    if err:
        raise MediaError("decode_error", f"{fmt} with frames that do not decode: {err[:160]}")
    st = streams[0]
    frames = int(st.get("nb_read_frames") or 0)
    if frames < 1:
        raise MediaError("decode_error", f"{fmt} with no decodable frame")
    width, height = int(st.get("width") or 0), int(st.get("height") or 0)
    if not (limits.min_side <= min(width, height) and max(width, height) <= limits.max_side):
        raise MediaError("bad_size", f"{width}x{height} is outside {limits.min_side}..{limits.max_side}")
    if fmt in ("jpeg", "png"):
        return MediaInfo(fmt, 1, 0.0, width, height, 0.0)
    duration = _rate(st.get("duration")) or _rate((info.get("format") or {}).get("duration"))
    fps = _rate(st.get("avg_frame_rate")) or (frames / duration if duration > 0 else _rate(st.get("r_frame_rate")))
    if frames == 1 and duration == 0:
        fps = 0.0
    if fps > limits.max_fps:
        raise MediaError("bad_fps", f"{fps:.1f} frames per second is over {limits.max_fps:g}")
    if duration > limits.max_duration:
        raise MediaError("too_long", f"{duration:.0f} s is over {limits.max_duration:g} s")
    if fmt == "webm" and st.get("codec_name") not in ("vp8", "vp9", "av1"):
        fmt = "mkv"
    return MediaInfo(fmt, frames, round(fps, 6), width, height, round(duration, 6))
