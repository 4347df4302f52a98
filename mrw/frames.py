"""Video shards -> frame shards: decode each video once, sample, resize, JPEG-encode.

What GulpIO did for the reference code (burst every video at 8 FPS, resize to 256), in Parquet:
one ffmpeg process per video samples (and, for native sampling, resizes), Python encodes the JPEGs.

Two samplings. `reference` is GulpIO's burst, `ffmpeg -i CLIP -q:v 1 -r 8 -f image2 %04d.jpg`
(TwentyBN/GulpIO, `gulpio/utils.py`, `burst_frames_to_shm`): `-r` on the output makes ffmpeg emit
a constant 8 FPS, the frame shown at each 1/8 s, so a slower clip repeats frames and a faster one
drops them; each frame is then resized with OpenCV's bilinear `cv2.resize` to a shorter side of
`size` and a longer side of `int(size * long / short)` (GulpIO's `resize_by_short_edge`, which
truncates). `native` keeps the first frame of each 1/fps slot, never repeats one, and lets
ffmpeg's bicubic scaler round the longer side.

Frame shard `i` covers the same catalog rows as video shard `i`: one row per video that decoded,
one status row per video of the video shard (a video that failed to download has no row here; one
that fails to decode gets a `failed` status row).
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mrw import paths, shards
from mrw.errors import FatalError, UsageError
from mrw.stage import Distribution, StageReport, complete_shards, run_and_report

FRAMES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("frames", pa.list_(pa.binary())),
        ("timestamps", pa.list_(pa.float64())),
        ("num_frames", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)

#: JPEG bytes are compressed already: no codec on them, snappy on the small columns
PARQUET_OPTIONS = {
    "compression": {
        "id": "snappy",
        "frames.list.element": "none",
        "timestamps.list.element": "snappy",
        "num_frames": "snappy",
        "width": "snappy",
        "height": "snappy",
    }
}


#: sampling name -> what the stage manifest records about it
SAMPLINGS = {
    "reference": "ffmpeg -r <fps> on the output (the frame shown at each 1/fps), as GulpIO's burst",
    "native": "first frame of each 1/fps slot",
}
#: how each sampling resizes, for the stage manifest
RESIZES = {
    "reference": "shorter side, cv2.resize bilinear, longer side int(size * long / short)",
    "native": "shorter side, bicubic",
}


@dataclass(frozen=True)
class FrameSettings:
    """How frames are sampled and stored; recorded in the stage's `_stage.json`."""

    fps: float = 8.0  # the reference burst videos at 8 FPS
    size: int = 256  # shorter side, as the reference resized before its 224 crops
    quality: int = 90  # JPEG quality, 1-100
    sampling: str = "reference"  # "reference" (GulpIO's burst) or "native"

    def check(self) -> FrameSettings:
        if self.sampling not in SAMPLINGS:
            raise UsageError(
                f"--sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}"
            )
        if not (self.fps > 0 and np.isfinite(self.fps)):
            raise UsageError(f"--fps must be a positive number, got {self.fps}")
        if not 16 <= self.size <= 4096:
            raise UsageError(f"--size must be between 16 and 4096 pixels, got {self.size}")
        if not 1 <= self.quality <= 100:
            raise UsageError(f"--quality must be between 1 and 100, got {self.quality}")
        return self


class DecodeError(Exception):
    """A video that ffmpeg could not turn into frames (the item fails, not the run)."""


@dataclass
class DecodedVideo:
    frames: list  # RGB uint8 arrays, H x W x 3, shorter side = size (or what `convert` made)
    timestamps: list  # seconds from the first decoded frame
    width: int = 0
    height: int = 0


# -- decoding ---------------------------------------------------------------------------------
def _filter_graph(fps: float, size: int) -> str:
    # Keep the first frame that falls in each 1/fps slot: a faster clip is thinned to `fps`,
    # a slower one keeps every frame (no duplicates), variable-rate GIFs included.
    slot = f"floor((t-start_t)*{fps!r}+1e-6)"
    prev = f"floor((prev_selected_t-start_t)*{fps!r}+1e-6)"
    select = f"select='isnan(prev_selected_t)+gt({slot},{prev})'"
    scale = f"scale='if(gt(iw,ih),-1,{size})':'if(gt(iw,ih),{size},-1)':flags=bicubic"
    return f"{select},{scale},showinfo"


_TIME_BASE = re.compile(r"Parsed_showinfo.*config in time_base: (\d+)/(\d+)")
_PTS = re.compile(r"Parsed_showinfo.*\bn:\s*\d+\s+pts:\s*(-?\d+)")


def _read_ppm_stream(stream) -> Iterator[np.ndarray]:
    """Frames of an ffmpeg `image2pipe` PPM stream: self-describing, so sizes need no probing."""
    while True:
        header = b""
        fields: list[bytes] = []
        while len(fields) < 4:  # magic, width, height, maxval
            ch = stream.read(1)
            if not ch:
                if fields or header:
                    raise DecodeError("truncated frame stream")
                return
            if ch.isspace():
                if header:
                    fields.append(header)
                    header = b""
            else:
                header += ch
        if fields[0] != b"P6" or fields[3] != b"255":
            raise DecodeError("unexpected frame format from ffmpeg")
        w, h = int(fields[1]), int(fields[2])
        data = stream.read(w * h * 3)
        if len(data) != w * h * 3:
            raise DecodeError("truncated frame stream")
        yield np.frombuffer(data, np.uint8).reshape(h, w, 3)


def reference_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after GulpIO's `resize_by_short_edge`: the shorter side becomes `size`,
    the longer one `int(size * long / short)`, truncated."""
    if height < width:
        return int(size * (width / float(height))), size
    return size, int(size * (height / float(width)))


def _reference_resize(frame: np.ndarray, size: int) -> np.ndarray:
    h, w = frame.shape[:2]
    return cv2.resize(frame, reference_size(w, h, size), interpolation=cv2.INTER_LINEAR)


def _reference_args(fps: float) -> list[str]:
    # the burst's own output options (`-r` after `-i`, default frame-rate mode); -debug_ts logs
    # each frame's timestamp as it leaves, after ffmpeg has repeated or dropped frames
    return ["-an", "-sn", "-dn", "-r", _rate_text(fps)]


def _rate_text(fps: float) -> str:
    return str(int(fps)) if float(fps).is_integer() else repr(float(fps))


_MUXED_PTS = re.compile(r"muxer <- type:video pkt_pts:-?\d+ pkt_pts_time:(-?[0-9.e+-]+)")


def decode_video(
    data: bytes,
    fmt: str | None,
    fps: float = 8.0,
    size: int = 256,
    scratch_dir: Path | None = None,
    convert: Callable | None = None,
    sampling: str = "native",
) -> DecodedVideo:
    """Decode once with ffmpeg, sampled at `fps` and resized to a shorter side of `size`.

    `sampling="native"`: the first frame of each 1/fps slot (every frame of a slower clip);
    `"reference"`: GulpIO's burst, the frame shown at each 1/fps (see the module's docstring).

    `convert` (e.g. JPEG encoding) runs on each frame as it arrives, while ffmpeg decodes the
    next ones, so a long clip never sits in memory as raw pixels.

    MP4 needs seeking (its index may sit at the end), so the bytes go to a scratch file named like
    the stage's temporaries, which `shards.remove_temporaries` clears after a killed run.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown sampling {sampling!r}")
    if not data:
        raise DecodeError("empty media")
    scratch_dir = Path(scratch_dir) if scratch_dir else Path(os.environ.get("TMPDIR", "/tmp"))
    scratch_dir.mkdir(parents=True, exist_ok=True)
    ext = re.sub(r"[^a-z0-9]", "", (fmt or "bin").lower()) or "bin"
    tmp = scratch_dir / f"{shards.TMP_PREFIX}decode-{os.getpid()}-{uuid.uuid4().hex[:12]}.{ext}"
    try:
        tmp.write_bytes(data)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written scratch file
        raise
    reference = sampling == "reference"
    if reference:
        sample_args = _reference_args(fps)
    else:
        graph = _filter_graph(fps, size)
        sample_args = [
            "-map",
            "0:v:0",
            "-an",
            "-sn",
            "-dn",
            "-vf",
            graph,
            "-fps_mode",
            "passthrough",
        ]
    cmd = [
        "ffmpeg",
        "-hide_banner",
        "-nostats",
        "-nostdin",
        "-loglevel",
        "level+info",  # each line tagged with its level: errors are told from showinfo's lines
        *(["-debug_ts"] if reference else []),
        "-threads",
        "1",
        "-i",
        str(tmp),
        *sample_args,
        "-f",
        "image2pipe",
        "-c:v",
        "ppm",
        "pipe:1",
    ]
    try:
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except FileNotFoundError:
            raise FatalError("ffmpeg not found on PATH: install ffmpeg (5.x or newer)") from None
        log: list[bytes] = []
        tail: deque = deque(maxlen=LOG_TAIL_LINES)
        errors: list[bytes] = []
        reader = threading.Thread(
            target=_collect_log, args=(proc.stderr, log, tail, errors), daemon=True
        )
        reader.start()
        frames, dims = [], (0, 0)
        try:
            for frame in _read_ppm_stream(proc.stdout):
                if reference:
                    frame = _reference_resize(frame, size)
                dims = frame.shape[:2]
                frames.append(convert(frame) if convert else frame)
        except BaseException:
            proc.kill()
            raise
        finally:
            rc = proc.wait()
            reader.join()
        text = b"".join(log).decode("utf-8", "replace")
        if rc != 0:  # the message without the scratch name, so a re-run writes the same bytes
            rest = b"".join([*errors, *tail]).decode("utf-8", "replace")
            raise DecodeError(_clean(_last_error_line(rest), tmp) or f"ffmpeg exited with {rc}")
        # ffmpeg conceals damaged frames and exits 0: any error it logged fails the item
        if errors:
            first = errors[0].decode("utf-8", "replace")
            raise DecodeError(f"frames that do not decode: {_clean(first, tmp)}")
        if not frames:
            raise DecodeError("no video frames decoded")
        if reference:
            times = [float(t) for t in _MUXED_PTS.findall(text)]
            if len(times) != len(frames):
                raise DecodeError(
                    f"ffmpeg reported {len(times)} timestamps for {len(frames)} frames"
                )
            timestamps = [round(t - times[0], 6) for t in times]
            return DecodedVideo(frames, timestamps, width=dims[1], height=dims[0])
        tb = _TIME_BASE.search(text)
        pts = [int(m) for m in _PTS.findall(text)]
        if tb is None or len(pts) != len(frames):
            raise DecodeError(f"ffmpeg reported {len(pts)} timestamps for {len(frames)} frames")
        base = Fraction(int(tb.group(1)), int(tb.group(2)))
        timestamps = [float((p - pts[0]) * base) for p in pts]
        return DecodedVideo(frames=frames, timestamps=timestamps, width=dims[1], height=dims[0])
    finally:
        tmp.unlink(missing_ok=True)


_ERROR_LINE = re.compile(r"^.*\[(?:error|fatal|panic)\].*$", re.MULTILINE)


def _clean(line: str, scratch: Path) -> str:
    """A log line as it would read on any run: no scratch file name, addresses or level tags."""
    line = line.replace(f"{scratch}: ", "").replace(str(scratch), "input")
    line = re.sub(r" @ 0x[0-9a-fA-F]+", "", line)
    return " ".join(re.sub(r"\[(?:info|warning|error|fatal|panic)\] ?", "", line).split())[:300]


#: lines of ffmpeg's log kept, besides the per-frame ones, for the message of a failure
LOG_TAIL_LINES = 64
#: error lines kept (the first ones: they name the damage)
LOG_ERROR_LINES = 16
_DEBUG_TS_PREFIXES = (b"demuxer", b"decoder ->", b"encoder ", b"muxer <-", b"filter ")
_LEVEL_TAG = re.compile(rb"^\[(?:info|warning|error|fatal|panic|verbose|debug)\] ")
_ERROR_TAG = re.compile(rb"\[(?:error|fatal|panic)\]")


def _collect_log(stream, frame_lines: list, tail: deque, errors: list) -> None:
    """ffmpeg's log (`-loglevel level+info`), bounded: the per-frame lines that timestamps come
    from (showinfo's, the muxer's), the first error lines, and the last few others;
    -debug_ts's other per-packet lines are dropped."""
    for line in stream:
        body = _LEVEL_TAG.sub(b"", line, count=1)
        if b"Parsed_showinfo" in line or body.startswith(b"muxer <-"):
            frame_lines.append(line)
        elif _ERROR_TAG.search(line[:120]):
            if len(errors) < LOG_ERROR_LINES:
                errors.append(line)
        elif not body.startswith(_DEBUG_TS_PREFIXES) and b"Last message repeated" not in body:
            tail.append(line)


def _last_error_line(log: str) -> str:
    errors = _ERROR_LINE.findall(log)
    if errors:
        return errors[-1].strip()[:300]
    lines = [ln.strip() for ln in log.splitlines() if ln.strip() and "Parsed_showinfo" not in ln]
    return lines[-1][:300] if lines else ""


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise DecodeError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """One stored frame back to RGB uint8 (H x W x 3); a DecodeError if it is not an image."""
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    except cv2.error:
        bgr = None
    if bgr is None:
        raise DecodeError("not a decodable JPEG")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# -- the stage --------------------------------------------------------------------------------
@dataclass
class FramesReport(StageReport):
    video_seconds: float = 0.0

    def summary(self) -> str:
        text = self.counts("frames", "videos") + ")"
        if self.shards_waiting:
            text += (
                f"; {self.shards_waiting} video shards are not complete yet "
                "(run `mrw download` to finish them, then run this again)"
            )
        return text


def ordered_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """`fn` over `items` in a thread pool, results in input order, a bounded number in flight."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def require_videos(root: paths.Root, dataset: str, split: str) -> Path:
    videos_dir = paths.videos_dir(root, dataset, split)
    if not shards.status_shards(videos_dir):
        raise UsageError(
            f"no video shards for {dataset}/{paths.normalize_split(split)} under "
            f"{paths.resolve_root(root)}: run `mrw download --dataset {dataset} --split "
            f"{paths.normalize_split(split)}` first"
        )
    return videos_dir


def _frames_row(item: dict, settings: FrameSettings, scratch: Path) -> tuple[dict | None, dict]:
    status = {"id": item["id"], "url": item.get("url"), "attempts": 1}
    try:
        decoded = decode_video(
            item["video"],
            item.get("format"),
            settings.fps,
            settings.size,
            scratch,
            convert=lambda f: encode_jpeg(f, settings.quality),
            sampling=settings.sampling,
        )
    except DecodeError as e:
        return None, {**status, "status": "failed", "error": f"decode_error: {e}"}
    jpegs = decoded.frames
    row = {
        "id": item["id"],
        "frames": jpegs,
        "timestamps": decoded.timestamps,
        "num_frames": len(jpegs),
        "width": decoded.width,
        "height": decoded.height,
    }
    duration = decoded.timestamps[-1] + 1.0 / settings.fps if len(jpegs) > 1 else 0.0
    row["_seconds"] = float(item.get("duration") or duration or 0.0)
    return row, {**status, "status": "ok", "error": None}


@dataclass(frozen=True)
class FramesStage:
    """Frame shard `i` from video shard `i`: every video decoded, `workers` at once."""

    videos_dir: Path
    stage_dir: Path
    settings: FrameSettings
    workers: int
    local_shards: int = 1  # the videos of one shard run in parallel already
    num_cpus: float = 1.0
    actor_gpus: float | None = None

    def open(self) -> None:
        return None

    def run_shard(self, context: None, index: int) -> None:
        urls = {
            r["id"]: r["url"]
            for r in shards.iter_rows(
                [shards.status_path(self.videos_dir, index)], columns=["id", "url"]
            )
        }
        data_file = shards.data_path(self.videos_dir, index)
        items = (
            {**r, "url": urls.get(r["id"])}
            for r in shards.iter_rows(
                [data_file] if data_file.exists() else [],
                columns=["id", "video", "format", "duration"],
                batch_size=16,
            )
        )
        rows, status = [], []
        for row, st in ordered_map(
            lambda it: _frames_row(it, self.settings, self.stage_dir), items, self.workers
        ):
            status.append(st)
            if row is not None:
                row.pop("_seconds")
                rows.append(row)
        table = pa.Table.from_pylist(rows, schema=FRAMES_SCHEMA) if rows else None
        shards.write_shard(self.stage_dir, index, table, status, **PARQUET_OPTIONS)


def _add_seconds(report: FramesReport, videos_dir: Path, stage_dir: Path, index: int) -> None:
    """Add the seconds of video behind one written frame shard to the report."""
    data, source = shards.data_path(stage_dir, index), shards.data_path(videos_dir, index)
    if not (data.exists() and source.exists()):
        return
    ids = set(pq.read_table(data, columns=["id"]).column("id").to_pylist())
    videos = pq.read_table(source, columns=["id", "duration"])
    report.video_seconds += sum(
        float(d or 0.0)
        for i, d in zip(videos.column("id").to_pylist(), videos.column("duration").to_pylist())
        if i in ids
    )


@shards.holds_stage_lock(lambda a: paths.frames_dir(a["root"], a["dataset"], a["split"]))
def extract_frames(
    root: paths.Root = None,
    dataset: str = "mrw",
    split: str = "test",
    fps: float = 8.0,
    size: int = 256,
    quality: int = 90,
    workers: int | None = None,
    progress: bool = True,
    sampling: str = "reference",
    distribution: Distribution | None = None,
) -> FramesReport:
    """Every complete video shard without a complete frame shard -> a frame shard; resumable.

    Locally `workers` videos decode at once (default: the CPUs); on Ray each shard is one task of
    `workers` CPUs (default 1).
    """
    dataset = paths.check_dataset(dataset)
    split = paths.normalize_split(split)
    distribution = (distribution or Distribution()).check()
    settings = FrameSettings(float(fps), int(size), int(quality), sampling).check()
    on_ray = distribution.distributor == "ray"
    workers = (1 if on_ray else (os.cpu_count() or 1)) if workers is None else int(workers)
    if workers < 1:
        raise UsageError(f"--workers must be a positive integer, got {workers}")
    videos_dir = require_videos(root, dataset, split)
    stage_dir = paths.stage_dir(root, dataset, split, "frames")
    video_manifest = shards.read_manifest(videos_dir) or {}
    shards.check_manifest(
        stage_dir,
        {
            "stage": "frames",
            **asdict(settings),
            "sampling_rule": SAMPLINGS[settings.sampling],
            "resize": RESIZES[settings.sampling],
            "shard_size": video_manifest.get("shard_size"),
        },
    )
    shards.remove_temporaries(stage_dir)

    indices, waiting = complete_shards(videos_dir)
    report = FramesReport(
        stage_dir=stage_dir, shards_total=len(indices), shards_waiting=len(waiting)
    )
    stage = FramesStage(videos_dir, stage_dir, settings, workers, num_cpus=float(workers))
    return run_and_report(
        stage,
        indices,
        report,
        distribution,
        "extract-frames",
        progress,
        count=lambda rep, index: _add_seconds(rep, videos_dir, stage_dir, index),
    )
