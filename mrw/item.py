"""One item of a download: fetched (or read from a local folder), probed, made a shard row.

This is all a download's worker process imports (no pyarrow, no stage runner), so that starting
one costs a fraction of a second.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from mrw.fetch import FetchConfig, Fetcher
from mrw.media import MediaError, MediaLimits, probe_media

MEDIA_SUFFIXES = ("mp4", "gif", "webm", "mkv", "mov", "jpg", "jpeg", "png", "avi", "flv", "webp")


@dataclass
class ItemResult:
    id: str
    url: str | None
    row: dict | None
    error: str | None
    attempts: int

    @property
    def status(self) -> dict:
        return {
            "id": self.id,
            "url": self.url,
            "status": "ok" if self.row else "failed",
            "error": self.error,
            "attempts": self.attempts,
        }


def _validate(
    item_id: str, url: str | None, data: bytes, attempts: int, limits: MediaLimits
) -> ItemResult:
    try:
        info = probe_media(data, limits)
    except MediaError as e:
        return ItemResult(item_id, url, None, f"{e.cls}: {e.message}", attempts)
    row = {
        "id": item_id,
        "video": data,
        "format": info.format,
        "sha256": hashlib.sha256(data).hexdigest(),
        "num_frames": info.num_frames,
        "fps": info.fps,
        "width": info.width,
        "height": info.height,
        "duration": info.duration,
    }
    return ItemResult(item_id, url, row, None, attempts)


def local_file(from_dir: Path, item: dict) -> Path | None:
    """The local media file of an item: `<id>.<ext>`, or COCO's `<filepath>/<filename>`."""
    for rel in (
        [f"{item['filepath']}/{item['filename']}", item["filename"]]
        if item.get("filename") and item.get("filepath")
        else []
    ):
        p = from_dir / rel
        if p.is_file():
            return p
    for ext in MEDIA_SUFFIXES:
        p = from_dir / f"{item['id']}.{ext}"
        if p.is_file():
            return p
    return None


def still_check(result: ItemResult, stills_ok: bool) -> ItemResult:
    """A single-frame file in a video dataset fails as `not_animated`: dead GIF hosts answer 200
    with a still placeholder image."""
    if stills_ok or result.row is None or result.row["num_frames"] >= 2:
        return result
    fmt = result.row["format"]
    return ItemResult(
        result.id,
        result.url,
        None,
        f"not_animated: a still {fmt} (1 frame) where the dataset has video",
        result.attempts,
    )


class ItemWorker:
    def __init__(
        self,
        from_dir: Path | None,
        fetch_config: FetchConfig,
        limits: MediaLimits,
        stills_ok: bool = True,
    ) -> None:
        self.from_dir, self.limits, self.stills_ok = from_dir, limits, stills_ok
        self.fetcher = Fetcher(fetch_config)

    def __call__(self, item: dict) -> ItemResult:
        return still_check(self._fetch_and_probe(item), self.stills_ok)

    def _fetch_and_probe(self, item: dict) -> ItemResult:
        item_id, url = item["id"], item.get("url")
        if self.from_dir is not None:
            path = local_file(self.from_dir, item)
            if path is None:
                return ItemResult(
                    item_id, url, None, f"missing: no file {item_id}.<ext> in {self.from_dir}", 1
                )
            size = path.stat().st_size
            if size > self.limits.max_bytes:
                return ItemResult(
                    item_id,
                    url,
                    None,
                    f"too_large: {path.name} has {size} bytes, over the cap of {self.limits.max_bytes}",
                    1,
                )
            return _validate(item_id, url, path.read_bytes(), 1, self.limits)
        if not url:
            return ItemResult(
                item_id, url, None, "no_url: the release gives no URL for this item", 0
            )
        res = self.fetcher.fetch(url)
        if not res.ok:
            return ItemResult(item_id, url, None, res.error_text, res.attempts)
        return _validate(item_id, url, res.data or b"", res.attempts, self.limits)
