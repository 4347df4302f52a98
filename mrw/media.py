"""Probe and validate media bytes: what they are, and whether they decode.

Two depths. `probe_media(data)` (what `mrw download` runs on every item) parses the container
completely in-process and decodes only the first frame: the bytes are sniffed, the declared
geometry is checked before anything is decoded (so a 16000x16000 GIF costs nothing), every
video packet is indexed (PyAV demuxing without decoding; GIF frame descriptors walked here) and
must lie inside the bytes received, and frame count, fps and duration come from that index.
`probe_media(data, thorough=True)` (what `mrw validate` runs) does the same, then decodes every
frame with `ffprobe -count_frames`, whose decoder also reports concealed errors inside frames.
Failures are classified: `not_video` (an HTML page, random bytes, no video stream), `truncated`
(a packet or frame past the end of the bytes), `decode_error` (a container that does not parse,
or frames that do not decode), `too_large`, `bad_size`, `bad_fps`, `too_long`. Messages depend
only on the bytes (no file names, no addresses), so status rows are the same on every run.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from mrw.errors import FatalError
from mrw.fetch import looks_like_html

if TYPE_CHECKING:  # PyAV is imported only when media are read
    import av
    import av.container
    import av.video


@dataclass(frozen=True)
class MediaLimits:
    """What counts as a sane clip; plain data passed down from the download options."""

    max_bytes: int = 64 * 1024 * 1024
    min_side: int = 8
    max_side: int = 8192
    #: width x height of one frame; bounds the memory of every decode (4096x4096 RGBA is 64 MiB)
    max_pixels: int = 4096 * 4096
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
        r = Fraction(text or "")
        return float(r) if r > 0 else 0.0
    except (TypeError, ValueError, ZeroDivisionError):
        return 0.0


def _check_geometry(fmt: str, width: int, height: int, limits: MediaLimits) -> None:
    """Raise `bad_size` for a frame outside the limits; called before any pixel is decoded."""
    w, h = width, height
    if not (limits.min_side <= min(w, h) and max(w, h) <= limits.max_side):
        raise MediaError(
            "bad_size", f"{fmt} of {w}x{h} is outside {limits.min_side}..{limits.max_side}"
        )
    if w * h > limits.max_pixels:
        raise MediaError(
            "bad_size", f"{fmt} of {w}x{h} is over the cap of {limits.max_pixels} pixels a frame"
        )


def _check_limits(info: MediaInfo, limits: MediaLimits) -> MediaInfo:
    _check_geometry(info.format, info.width, info.height, limits)
    if info.fps > limits.max_fps:
        raise MediaError("bad_fps", f"{info.fps:.1f} frames per second is over {limits.max_fps:g}")
    if info.duration > limits.max_duration:
        raise MediaError("too_long", f"{info.duration:.0f} s is over {limits.max_duration:g} s")
    return info


def _error_text(e: BaseException) -> str:
    """What went wrong, without the object addresses or names some library messages carry."""
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return re.sub(r" at 0x[0-9a-fA-F]+| @ 0x[0-9a-fA-F]+", "", " ".join(str(text).split()))[:160]


# -- GIF: the frame descriptors, walked -------------------------------------------------------
#: GIF delays below 2 centiseconds play as 10 (browsers and FFmpeg's demuxer agree)
GIF_MIN_DELAY, GIF_DEFAULT_DELAY = 2, 10


def _gif_index(data: bytes, limits: MediaLimits) -> MediaInfo:
    """Walk every block of a GIF: geometry, frame count and delays, without decoding pixels.

    The logical screen is checked first, and every frame's rectangle against the same limits,
    so that no decoder is ever asked for a canvas the limits refuse."""
    n = len(data)
    if n < 13:
        raise MediaError("truncated", f"gif of {n} bytes ends inside its header")
    width, height = struct.unpack_from("<HH", data, 6)
    _check_geometry("gif", width, height, limits)
    packed = data[10]
    i = 13 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0)
    frames, centiseconds, delay = 0, 0, 0
    canvas_w, canvas_h = width, height

    def sub_blocks(i: int) -> int:
        while i < n:
            size = data[i]
            i += size + 1
            if size == 0:
                return i
        raise MediaError("truncated", f"gif of {n} bytes ends inside frame {frames + 1}")

    while True:
        if i >= n:  # no trailer: fine after a whole frame (many encoders omit it)
            if frames == 0:
                raise MediaError("truncated", f"gif of {n} bytes ends before its first frame")
            break
        block = data[i]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: a label, then sub-blocks
            if i + 2 >= n:
                raise MediaError("truncated", f"gif ends inside an extension at byte {i}")
            if data[i + 1] == 0xF9 and data[i + 2] >= 4 and i + 6 < n:
                delay = data[i + 4] | data[i + 5] << 8
            i = sub_blocks(i + 2)
        elif block == 0x2C:  # image descriptor, local colour table, LZW code size, sub-blocks
            if i + 10 > n:
                raise MediaError("truncated", f"gif ends inside frame {frames + 1}'s descriptor")
            left, top, fw, fh = struct.unpack_from("<HHHH", data, i + 1)
            canvas_w, canvas_h = max(canvas_w, left + fw), max(canvas_h, top + fh)
            if (canvas_w, canvas_h) != (width, height):
                _check_geometry(f"gif frame {frames + 1}", canvas_w, canvas_h, limits)
            lct = data[i + 9]
            i += 10 + (3 << ((lct & 7) + 1) if lct & 0x80 else 0) + 1
            i = sub_blocks(i)
            frames += 1
            centiseconds += delay if delay >= GIF_MIN_DELAY else GIF_DEFAULT_DELAY
            delay = 0
        else:
            raise MediaError("decode_error", f"gif with an unknown block 0x{block:02x} at byte {i}")
    if frames == 0:
        raise MediaError("decode_error", "gif without a frame")
    duration = centiseconds / 100 if frames > 1 else 0.0
    fps = frames / duration if duration > 0 else 0.0
    return MediaInfo("gif", frames, round(fps, 6), width, height, round(duration, 6))


# -- still images and first frames: Pillow ------------------------------------------------------
def _decode_first_image(data: bytes, fmt: str, limits: MediaLimits) -> tuple[int, int]:
    """Decode the first frame with Pillow after checking the size its header declares."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=[fmt.upper()]) as im:  # sniffed already
            width, height = im.size  # from the header: nothing decoded yet
            _check_geometry(fmt, width, height, limits)
            im.load()
    except MediaError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... on bad data
        if isinstance(e, OSError) and "truncated" in str(e):
            raise MediaError("truncated", f"{fmt} that ends inside its first frame") from None
        raise MediaError(
            "decode_error", f"{fmt} whose first frame does not decode: {_error_text(e)}"
        ) from None
    return width, height


#: JPEG start-of-frame markers (every SOFn but DHT, JPG and DAC)
JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _still_geometry(data: bytes, fmt: str) -> tuple[int, int] | None:
    """Width and height as a PNG's IHDR or a JPEG's start-of-frame declares them, or None."""
    if fmt == "png":
        return struct.unpack_from(">II", data, 16) if data[12:16] == b"IHDR" else None
    i, n = 2, len(data)
    while i + 9 <= n and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        elif marker in JPEG_SOF:
            height, width = struct.unpack_from(">HH", data, i + 5)
            return width, height
        else:
            i += 2 + struct.unpack_from(">H", data, i + 2)[0]
    return None


def _probe_image(data: bytes, fmt: str, limits: MediaLimits) -> MediaInfo:
    declared = _still_geometry(data, fmt)
    if declared is not None:  # before Pillow: its own bomb check warns on stderr, then raises
        _check_geometry(fmt, *declared, limits)
    width, height = _decode_first_image(data, fmt, limits)
    return MediaInfo(fmt, 1, 0.0, width, height, 0.0)


# -- containers FFmpeg reads: PyAV, in-process --------------------------------------------------
#: FFmpeg's demuxer for each sniffed container (given, so nothing else is tried)
DEMUXERS = {"mp4": "mov", "mov": "mov", "mkv": "matroska", "webm": "matroska", "avi": "avi"}
DEMUXERS.update(flv="flv", webp="webp_pipe")


def _import_av() -> ModuleType:
    try:
        import av
    except ImportError:
        raise FatalError(
            "PyAV is not installed: `pip install av` (it reads media in-process)"
        ) from None
    return av


def _ebml_number(data: bytes, i: int, keep_marker: bool) -> tuple[int, int, bool]:
    """An EBML variable-length number at `i`: its value, where it ends, whether it is the
    reserved 'unknown size'."""
    first = data[i]
    length = 9 - first.bit_length()
    if length > 8 or i + length > len(data):
        raise IndexError(i)
    value = first if keep_marker else first & (0xFF >> length)
    for k in range(1, length):
        value = value << 8 | data[i + k]
    unknown = not keep_marker and value == (1 << (7 * length)) - 1
    return value, i + length, unknown


def _check_whole(data: bytes, fmt: str) -> None:
    """The container's own sizes must fit in the bytes: demuxers of Matroska, AVI and FLV drop a
    cut-off last packet without a word, so a truncated file would otherwise pass with fewer
    frames."""
    n = len(data)
    cut = MediaError("truncated", f"{fmt} whose declared size runs past the end of the {n} bytes")
    if fmt in ("avi", "webp"):  # RIFF: the size of everything after the first 8 bytes
        if 8 + struct.unpack_from("<I", data, 4)[0] > n:
            raise cut
    elif fmt in ("mkv", "webm"):  # EBML header, then a Segment whose size is known or not
        try:
            _, i, _ = _ebml_number(data, 0, True)
            size, i, _ = _ebml_number(data, i, False)
            i += size
            seg_id, i, _ = _ebml_number(data, i, True)
            size, i, unknown = _ebml_number(data, i, False)
        except IndexError:
            raise cut from None
        if seg_id != 0x18538067:
            return
        if not unknown:
            if i + size > n:
                raise cut
            return
        while i < n:  # a segment of unknown size (streamed): its children must be whole
            try:
                _, i, _ = _ebml_number(data, i, True)
                size, i, unknown = _ebml_number(data, i, False)
            except IndexError:
                raise cut from None
            if unknown:
                return
            i += size
        if i > n:
            raise cut
    elif fmt == "flv":  # a header, then tags of 11 + size bytes, each followed by 4
        if n < 9:
            raise cut
        i = struct.unpack_from(">I", data, 5)[0] + 4
        while i < n:
            if i + 11 > n:
                raise cut
            i += 11 + int.from_bytes(data[i + 1 : i + 4], "big") + 4
        if i - 4 > n:
            raise cut


def _sample_table(st: av.video.stream.VideoStream, data: bytes, fmt: str) -> int | None:
    """Frames listed in an MP4's sample table (read by the demuxer as the file opens), every
    sample checked to lie inside the bytes; None where the table is not the whole story
    (fragmented files, an index that disagrees with the sample count), so packets get read."""
    entries = getattr(st, "index_entries", None)  # PyAV 15+
    if fmt not in ("mp4", "mov") or entries is None or not st.frames:
        return None
    total, count, end = 0, 0, 0
    for entry in entries:
        total += 1
        if not entry.is_discard:
            count += 1
        end = max(end, entry.pos + entry.size)
    if total != st.frames:
        return None
    if end > len(data):
        raise MediaError(
            "truncated",
            f"{fmt} whose sample table places frames up to byte {end}, past the end of the "
            f"{len(data)} bytes",
        )
    return count


def _demux_all(
    container: av.container.InputContainer,
    st: av.video.stream.VideoStream,
    data: bytes,
    fmt: str,
) -> tuple[int, av.Packet | None]:
    """Read every packet of the stream (no decoding): the frames counted, each packet inside the
    bytes, and the first packet, kept for decoding."""
    av = _import_av()
    total, count, first = 0, 0, None
    try:
        for packet in container.demux(st):
            if packet.size == 0:
                continue
            total += 1
            if first is None:
                first = packet
            count += not packet.is_discard
            past_end = packet.pos is not None and packet.pos + packet.size >= len(data)
            if packet.is_corrupt:
                if past_end:
                    raise MediaError(
                        "truncated",
                        f"{fmt} whose packet {total} at byte {packet.pos} runs past the end of "
                        f"the {len(data)} bytes",
                    )
                raise MediaError("decode_error", f"{fmt} with a damaged packet {total}")
    except av.FFmpegError as e:
        raise MediaError(
            "decode_error",
            f"{fmt} whose container stops parsing after packet {total}: {_error_text(e)}",
        ) from None
    listed = st.frames or 0
    if listed and total < listed:
        raise MediaError(
            "truncated", f"{fmt} holding {total} of the {listed} packets its index lists"
        )
    return count, first


def _decode_first(
    ctx: av.video.codeccontext.VideoCodecContext,
    first: av.Packet | None,
    fmt: str,
    limits: MediaLimits,
) -> av.VideoFrame:
    """The first frame of a stream from its first packet, in one thread, memory bounded."""
    av = _import_av()
    if first is None:
        raise MediaError("decode_error", f"{fmt} with no video packet")
    ctx.thread_count = 1
    ctx.options = {"max_pixels": str(limits.max_pixels)}
    try:
        frames = ctx.decode(first) or ctx.decode(None)
    except av.FFmpegError as e:
        raise MediaError(
            "decode_error", f"{fmt} whose first frame does not decode: {_error_text(e)}"
        ) from None
    if not frames:
        raise MediaError("decode_error", f"{fmt} whose first frame does not decode")
    return frames[0]


def _probe_container(data: bytes, fmt: str, limits: MediaLimits) -> MediaInfo:
    """Index every packet of the first video stream (no decoding), then decode its first frame.

    An MP4's sample table gives the index as the file opens; other containers are demuxed to the
    end. `max_pixels` bounds every decoder FFmpeg opens: the one that looks at the stream's
    first packets while the container opens, and ours."""
    av = _import_av()
    opts = {"max_pixels": str(limits.max_pixels), "threads": "1", "skip_frame": "nonkey"}
    try:
        container = av.open(io.BytesIO(data), format=DEMUXERS.get(fmt), options=opts)
    except av.FFmpegError as e:
        raise MediaError(
            "decode_error", f"{fmt} whose container does not parse: {_error_text(e)}"
        ) from None
    with container:
        if not container.streams:  # a header, then nothing FFmpeg can read as a stream
            raise MediaError("decode_error", f"{fmt} whose container holds no readable stream")
        if not container.streams.video:
            raise MediaError("not_video", f"{fmt} without a video stream")
        st = container.streams.video[0]
        ctx = st.codec_context
        if ctx is None:
            raise MediaError("decode_error", f"{fmt} whose video codec has no decoder")
        if ctx.width or ctx.height:  # some streams (MPEG-4 part 2 in MP4) declare no size:
            # then `max_pixels` bounds the first decode, and its frame is checked below
            _check_geometry(fmt, ctx.width, ctx.height, limits)
        if fmt == "webm" and ctx.name not in ("vp8", "vp9", "av1", "libdav1d", "libvpx"):
            fmt = "mkv"
        count = _sample_table(st, data, fmt)
        _check_whole(data, fmt)
        try:
            if count is None:
                count, first = _demux_all(container, st, data, fmt)
            else:
                first = next((p for p in container.demux(st) if p.size), None)
        except av.FFmpegError as e:
            raise MediaError(
                "decode_error", f"{fmt} whose first packet cannot be read: {_error_text(e)}"
            ) from None
        frame = _decode_first(ctx, first, fmt, limits)
        width, height = frame.width, frame.height
        _check_geometry(fmt, width, height, limits)
        tb = st.time_base
        duration = float(st.duration * tb) if st.duration and tb else 0.0
        if duration <= 0 and container.duration:
            duration = container.duration / 1_000_000  # AV_TIME_BASE
        fps = float(st.average_rate) if st.average_rate else 0.0
        if fps <= 0 and duration > 0:
            fps = count / duration
        if duration <= 0 and fps > 0 and count > 1:  # a streamed file that never says
            duration = count / fps
    if count == 1 and fmt == "webp":
        fps, duration = 0.0, 0.0
    return MediaInfo(fmt, count, round(fps, 6), width, height, round(duration, 6))


def _probe_parsed(data: bytes, fmt: str, limits: MediaLimits) -> MediaInfo:
    """The download-time check: a complete parse of the container and the first frame decoded."""
    if fmt == "gif":
        info = _gif_index(data, limits)
        _decode_first_image(data, "gif", limits)
        return _check_limits(info, limits)
    if fmt in ("jpeg", "png"):
        return _check_limits(_probe_image(data, fmt, limits), limits)
    return _check_limits(_probe_container(data, fmt, limits), limits)


#: probe scratch files are `<tmp>/mrw-probe-<pid>-*`, so a later run can clear a killed one's
PROBE_PREFIX = "mrw-probe-"


def remove_stale_probes() -> int:
    """Delete probe scratch files whose process is gone (a killed run's); returns how many."""
    from mrw.shards import remove_stale_scratch

    return remove_stale_scratch(Path(_tmp_dir() or tempfile.gettempdir()), PROBE_PREFIX)


def _tmp_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


FFPROBE_MISSING = "ffprobe not found on PATH: install ffmpeg (5.x or newer), which brings it"


def require_ffprobe() -> None:
    """Stop at once, before any work, where media could not be checked."""
    import shutil

    if shutil.which("ffprobe") is None:
        raise FatalError(FFPROBE_MISSING)


def probe_media(
    data: bytes, limits: MediaLimits | None = None, thorough: bool = False
) -> MediaInfo:
    """Probe `data`; raise MediaError with a class when it is not a sane clip.

    Always: sniff, check the declared geometry, parse the whole container, decode the first
    frame (`_probe_parsed`). With `thorough=True`, then decode every frame with
    `ffprobe -count_frames`; the frame count, fps and duration it returns are ffprobe's."""
    limits = limits or MediaLimits()
    if len(data) > limits.max_bytes:
        raise MediaError("too_large", f"{len(data)} bytes is over the cap of {limits.max_bytes}")
    if not data:
        raise MediaError("not_video", "no bytes")
    fmt = sniff_format(data)
    if fmt is None:
        what = "an HTML page" if looks_like_html(data[:512]) else f"unknown bytes {data[:8]!r}"
        raise MediaError("not_video", f"{what}, not media")
    parsed = _probe_parsed(data, fmt, limits)
    if not thorough:
        return parsed
    return _check_limits(_ffprobe_every_frame(data, parsed.format, limits), limits)


def _ffprobe_every_frame(data: bytes, fmt: str, limits: MediaLimits) -> MediaInfo:
    with tempfile.NamedTemporaryFile(
        prefix=f"{PROBE_PREFIX}{os.getpid()}-", suffix="." + fmt, dir=_tmp_dir()
    ) as fh:
        fh.write(data)
        fh.flush()
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
            raise MediaError(
                "decode_error", f"decoding took over {limits.probe_timeout:g} s"
            ) from None
        except FileNotFoundError:
            raise FatalError(FFPROBE_MISSING) from None
        # neither the scratch file's name nor decoder addresses ("[h264 @ 0x55...]"): a report
        # must be the same on every run
        err = proc.stderr.decode(errors="replace").replace(fh.name, "input")
    err = " ".join(re.sub(r" @ 0x[0-9a-fA-F]+", "", err).split())
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
        return MediaInfo(fmt, 1, 0.0, width, height, 0.0)
    duration = _rate(st.get("duration")) or _rate((info.get("format") or {}).get("duration"))
    fps = _rate(st.get("avg_frame_rate")) or (
        frames / duration if duration > 0 else _rate(st.get("r_frame_rate"))
    )
    if frames == 1 and duration == 0:
        fps = 0.0
    return MediaInfo(fmt, frames, round(fps, 6), width, height, round(duration, 6))
