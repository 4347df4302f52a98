"""Frame strips for the preview: one small JPEG per item, from the frame shards when they exist,
else decoded from the video shards (COCO: the image itself).

Only the row groups that hold a chosen item are read, one at a time, so the work and the memory
follow the number of items shown, not the size of the split.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow.parquet as pq

from mrw import paths, shards
from mrw.frames import DecodeError, decode_jpeg, decode_video, encode_jpeg, ordered_map
from mrw.sampling import SPREAD, sample_frame_indices

STRIP_HEIGHT = 96  # pixels: a row of thumbnails readable at a glance, a few KB each
STRIP_FRAMES = 5  # frames per strip, spread evenly over the clip
STRIP_QUALITY = 80
MAX_DECODE_FPS = 8.0  # from video shards: a short clip still gives five distinct frames


@dataclass(frozen=True)
class RowPlace:
    """Where one item's media row sits: shard file, row group, row inside the group."""

    shard: Path
    group: int
    row: int


@dataclass
class StripWork:
    """What making the strips cost: the bound the preview's `--limit` promises."""

    source: str = "none"  # "frames", "videos" or "none"
    row_groups_read: int = 0
    media_bytes_read: int = 0
    strips_written: int = 0
    strips_failed: int = 0


def media_source(root: str | os.PathLike[str] | None, dataset: str, split: str) -> tuple[str, Path]:
    """The frame shards when frames were extracted, else the video shards."""
    frames = paths.frames_dir(root, dataset, split)
    if shards.data_shards(frames):
        return "frames", frames
    videos = paths.videos_dir(root, dataset, split)
    return ("videos", videos) if shards.data_shards(videos) else ("none", videos)


def index_rows(stage_dir: Path) -> dict[str, RowPlace]:
    """id -> place of its row, from the `id` column alone of every data shard."""
    places: dict[str, RowPlace] = {}
    for shard in shards.data_shards(stage_dir):
        pf = pq.ParquetFile(shard)
        for g in range(pf.num_row_groups):
            ids = pf.read_row_group(g, columns=["id"]).column("id").to_pylist()
            for r, item_id in enumerate(ids):
                places.setdefault(item_id, RowPlace(shard, g, r))
    return places


def read_video_info(stage_dir: Path) -> dict[str, dict]:
    """id -> duration, fps, size, frames and format: the small columns of the video shards."""
    columns = ["id", "format", "num_frames", "fps", "width", "height", "duration"]
    info: dict[str, dict] = {}
    for shard in shards.data_shards(stage_dir):
        table = pq.read_table(shard, columns=columns)
        for row in table.to_pylist():
            info.setdefault(row["id"], row)
    return info


def _thumb(rgb: np.ndarray, height: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    width = max(1, round(w * height / max(1, h)))
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


def strip_from_frames(frames: list[bytes], height: int = STRIP_HEIGHT) -> bytes:
    """Stored JPEG frames -> one JPEG strip of up to `STRIP_FRAMES` thumbnails side by side."""
    chosen = [
        decode_jpeg(frames[i]) for i in sample_frame_indices(len(frames), STRIP_FRAMES, SPREAD)
    ]
    if not chosen:
        raise DecodeError("no frames stored")
    return encode_jpeg(np.hstack([_thumb(f, height) for f in chosen]), STRIP_QUALITY)


def decode_fps(duration: float | None) -> float:
    """About twice the frames a strip needs over the clip, so that a long clip decodes few."""
    if not duration or not duration > 0:
        return MAX_DECODE_FPS
    return float(min(MAX_DECODE_FPS, max(0.05, 2 * STRIP_FRAMES / duration)))


def strip_from_media(
    data: bytes,
    fmt: str | None,
    scratch: Path,
    duration: float | None = None,
    height: int = STRIP_HEIGHT,
) -> bytes:
    """Media bytes (a clip or an image) -> one JPEG strip; ffmpeg decodes clips."""
    if fmt in ("jpeg", "jpg", "png", "webp"):
        return encode_jpeg(_thumb(decode_jpeg(data), height), STRIP_QUALITY)
    fps = decode_fps(duration)
    decoded = decode_video(data, fmt, fps=fps, size=height, scratch_dir=scratch)
    chosen = [
        decoded.frames[i] for i in sample_frame_indices(len(decoded.frames), STRIP_FRAMES, SPREAD)
    ]
    return encode_jpeg(np.hstack([_thumb(f, height) for f in chosen]), STRIP_QUALITY)


def _rows_by_group(
    wanted: Iterable[str], places: dict[str, RowPlace]
) -> list[tuple[Path, int, list[tuple[int, str]]]]:
    groups: dict[tuple[Path, int], list[tuple[int, str]]] = {}
    for item_id in wanted:
        p = places.get(item_id)
        if p is not None:
            groups.setdefault((p.shard, p.group), []).append((p.row, item_id))
    return [(shard, g, rows) for (shard, g), rows in sorted(groups.items())]


def write_strips(
    wanted: Iterable[str],
    source: str,
    stage_dir: Path,
    out_of: dict[str, Path],
    scratch: Path,
    workers: int = 2,
    progress: bool = False,
) -> tuple[StripWork, dict[str, str]]:
    """Write the strip of each wanted item that has media to `out_of[id]`.

    Returns the work done and, per item whose media did not make a strip, why.
    """
    wanted = list(wanted)
    work = StripWork(source=source)
    problems: dict[str, str] = {}
    if source == "none":
        return work, problems
    places = index_rows(stage_dir)
    columns = ["id", "frames"] if source == "frames" else ["id", "video", "format", "duration"]

    groups = _rows_by_group(wanted, places)
    files: dict[Path, pq.ParquetFile] = {}

    # a job's blob: a clip's list of JPEG frames, or its media file's bytes, by `source`
    def jobs() -> Iterator[tuple[str, Any, tuple]]:
        for shard, g, rows in groups:
            if shard not in files:
                files.clear()  # groups come shard by shard: one file open at a time
                files[shard] = pq.ParquetFile(shard)
            table = files[shard].read_row_group(g, columns=columns)
            work.row_groups_read += 1
            work.media_bytes_read += table.nbytes
            blobs = table.column(columns[1])
            for r, item_id in rows:
                extra = tuple(table.column(c)[r].as_py() for c in columns[2:])
                yield item_id, blobs[r].as_py(), extra
            del table, blobs

    def make(job: tuple[str, Any, tuple]) -> tuple[str, bytes | None, str | None]:
        item_id, blob, extra = job
        try:
            if source == "frames":
                return item_id, strip_from_frames(blob), None
            return item_id, strip_from_media(blob, extra[0], scratch, extra[1]), None
        except DecodeError as e:
            return item_id, None, str(e)

    from tqdm import tqdm

    total = sum(len(rows) for _, _, rows in groups)
    bar = tqdm(total=total, unit="item", desc="preview strips", disable=not progress)
    for item_id, jpeg, problem in ordered_map(make, jobs(), workers):
        bar.update(1)
        if jpeg is None:
            problems[item_id] = problem or "no strip"
            work.strips_failed += 1
            continue
        out_of[item_id].write_bytes(jpeg)
        work.strips_written += 1
    bar.close()
    return work, problems
