"""Catalog -> fetch -> validate -> video shards, with a status row for every item; resumable.

Items are taken in catalog order; shard `i` holds items `[i*S, (i+1)*S)`. A thread pool fetches
and probes items a bounded window ahead of the writer, which appends rows in catalog order to the
shard's temporary file (row groups of about `ROW_GROUP_BYTES`) and renames it when the shard is
done, then writes its status file. Memory stays bounded by the window, not by the shard; the bytes
of a shard depend only on its items, so a killed run resumed ends with exactly what an
uninterrupted run gives.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sys
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mrw import paths, shards
from mrw.catalog import read_catalog
from mrw.descriptors import load_descriptor
from mrw.errors import FatalError, UsageError
from mrw.fetch import FetchConfig, Fetcher, timeout_problem
from mrw.media import MediaError, MediaLimits, probe_media, remove_stale_probes, require_ffprobe

VIDEO_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("video", pa.binary()),
        ("format", pa.string()),
        ("sha256", pa.string()),
        ("num_frames", pa.int32()),
        ("fps", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("duration", pa.float64()),
    ]
)
#: Parquet options of video shards: media bytes are compressed already, so no codec on `video`
PARQUET_OPTIONS = {
    "compression": {"id": "snappy", "video": "none", "format": "snappy", "sha256": "snappy"},
    "use_dictionary": ["format"],
    "write_statistics": ["id", "num_frames", "fps", "width", "height", "duration"],
}
MEDIA_SUFFIXES = ("mp4", "gif", "webm", "mkv", "mov", "jpg", "jpeg", "png", "avi", "flv", "webp")


@dataclass
class DownloadReport:
    dataset: str
    split: str
    stage_dir: Path
    items: int = 0
    shards: int = 0
    skipped_shards: int = 0
    ok: int = 0
    failed: int = 0
    errors: Counter = field(default_factory=Counter)
    missing: list = field(default_factory=list)  # --from-dir: ids with no file

    def summary(self) -> str:
        lines = [
            f"{self.dataset}/{self.split}: {self.ok} ok, {self.failed} failed of {self.items} items "
            f"in {self.shards} shards ({self.skipped_shards} already complete) under {self.stage_dir}"
        ]
        for cls, n in sorted(self.errors.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {cls}: {n}")
        if self.missing:
            shown = ", ".join(self.missing[:5]) + (", ..." if len(self.missing) > 5 else "")
            lines.append(f"  missing files: {len(self.missing)} ({shown})")
        return "\n".join(lines)


# -- one item ---------------------------------------------------------------------------------
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


def _validate(item_id: str, url, data: bytes, attempts: int, limits: MediaLimits) -> ItemResult:
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


class _ItemWorker:
    def __init__(
        self,
        from_dir: Path | None,
        fetch_config: FetchConfig,
        limits: MediaLimits,
        stills_ok: bool = True,
    ):
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
        return _validate(item_id, url, res.data, res.attempts, self.limits)


# -- one shard's data file, streamed -------------------------------------------------------------
class VideoShardWriter:
    """Appends rows in order to a temporary Parquet file; `commit` renames it into place.

    Row groups close at about `shards.ROW_GROUP_BYTES`, a function of the rows alone, so the same
    rows always give the same bytes."""

    def __init__(self, stage_dir: Path, index: int):
        self.path = shards.data_path(stage_dir, index)
        self.tmp = (
            self.path.parent
            / f"{shards.TMP_PREFIX}{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        )
        self._writer = None
        self._rows: list[dict] = []
        self._bytes = 0
        self.count = 0

    def append(self, row: dict) -> None:
        self._rows.append(row)
        self._bytes += len(row["video"]) + 256
        self.count += 1
        if self._bytes >= shards.ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.tmp, VIDEO_SCHEMA, **PARQUET_OPTIONS)
        table = pa.Table.from_pylist(self._rows, schema=VIDEO_SCHEMA)
        self._writer.write_table(table, row_group_size=len(self._rows))
        self._rows, self._bytes = [], 0

    def commit(self) -> None:
        self._flush()
        if self._writer is None:  # nothing succeeded: no data file, as write_shard does
            self.path.unlink(missing_ok=True)
            return
        self._writer.close()
        with open(self.tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:
                pass
        self.tmp.unlink(missing_ok=True)


# -- the split ----------------------------------------------------------------------------------
def check_options(
    workers: int = 16,
    shard_size: int = 1000,
    timeout: float = 30.0,
    retries: int = 3,
    max_bytes: int = 64 * 1024 * 1024,
    limit: int | None = None,
    per_host: int = 4,
) -> None:
    """Refuse meaningless options before anything is read or written (UsageError)."""
    problem = timeout_problem(timeout)
    if problem:
        raise UsageError(f"--timeout: {problem}")
    for name, value, ok in (
        ("--workers", workers, isinstance(workers, int) and workers >= 1),
        ("--shard-size", shard_size, isinstance(shard_size, int) and shard_size >= 1),
        ("--retries", retries, isinstance(retries, int) and retries >= 0),
        ("--max-bytes", max_bytes, isinstance(max_bytes, int) and max_bytes >= 1),
        ("--limit", limit, limit is None or (isinstance(limit, int) and limit >= 0)),
        ("--per-host", per_host, isinstance(per_host, int) and per_host >= 1),
    ):
        if not ok:
            raise UsageError(f"{name} must be a positive number, got {value!r}")


def _prepare_stage_dir(stage_dir: Path) -> None:
    try:
        (stage_dir / "status").mkdir(parents=True, exist_ok=True)
        probe = stage_dir / f"{shards.TMP_PREFIX}write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write under {stage_dir}: {e.strerror or e}")


def _shard_done(stage_dir: Path, index: int, ids: list[str]) -> tuple[bool, list[dict]]:
    """A shard counts as complete when its status file holds exactly its items (an earlier run
    with --limit may have covered only part of it)."""
    p = shards.status_path(stage_dir, index)
    if not p.exists():
        return False, []
    try:
        rows = pq.read_table(p).to_pylist()
    except Exception:
        return False, []
    return [r["id"] for r in rows] == ids, rows


@shards.holds_stage_lock(lambda a: paths.videos_dir(a["root"], a["dataset"], a["split"]))
def download_split(
    root=None,
    dataset: str = "mrw",
    split: str = "test",
    from_dir=None,
    limit=None,
    workers: int = 16,
    shard_size: int = 1000,
    timeout: float = 30.0,
    retries: int = 3,
    max_bytes: int = 64 * 1024 * 1024,
    per_host: int = 4,
    backoff: float = 0.5,
    allow_still: bool = False,
    progress: bool = True,
    log=None,
) -> DownloadReport:
    """Fetch (or read `from_dir`), validate and shard every item of the split's catalog.

    In a video dataset a single-frame file fails as `not_animated` unless `allow_still`."""
    dataset, split = paths.check_dataset(dataset), paths.normalize_split(split)
    check_options(workers, shard_size, timeout, retries, max_bytes, limit, per_host)
    if from_dir is not None:
        from_dir = Path(from_dir)
        if not from_dir.is_dir():
            raise UsageError(f"--from-dir {from_dir}: no such folder")
    catalog = read_catalog(root, dataset, split)
    require_ffprobe()
    items = catalog.select(
        [c for c in ("id", "url", "filepath", "filename") if c in catalog.column_names]
    ).to_pylist()
    if limit is not None:
        items = items[:limit]
    stage_dir = paths.videos_dir(root, dataset, split)
    _prepare_stage_dir(stage_dir)
    shards.check_manifest(
        stage_dir,
        {
            "stage": "videos",
            "dataset": dataset,
            "split": split,
            "shard_size": shard_size,
            "max_bytes": max_bytes,
            # recorded only when set, so that stages written before the option still resume
            **({"allow_still": True} if allow_still else {}),
        },
    )
    shards.remove_temporaries(stage_dir)
    remove_stale_probes()
    log = log or (lambda msg: print(msg, file=sys.stderr))

    report = DownloadReport(dataset, split, stage_dir, items=len(items))
    todo = []  # (shard index, items)
    for index, (lo, hi) in enumerate(shards.shard_ranges(len(items), shard_size)):
        part = items[lo:hi]
        done, rows = _shard_done(stage_dir, index, [it["id"] for it in part])
        report.shards += 1
        if done:
            report.skipped_shards += 1
            _count(report, rows)
        else:
            todo.append((index, part))

    limits = MediaLimits(max_bytes=max_bytes)
    worker = _ItemWorker(
        from_dir,
        FetchConfig(
            timeout=timeout,
            retries=retries,
            max_bytes=max_bytes,
            per_host=per_host,
            backoff=backoff,
        ),
        limits,
        stills_ok=allow_still or load_descriptor(dataset).get("modality") == "image",
    )
    from tqdm import tqdm

    bar = tqdm(
        total=sum(len(p) for _, p in todo),
        unit="item",
        desc=f"{dataset}/{split}",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    bar.set_postfix(ok=report.ok, failed=report.failed)
    window = max(4 * workers, 32)
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mrw-download") as pool:
            queue = [(index, it) for index, part in todo for it in part]
            futures: dict[int, object] = {}
            submitted = 0
            writer = None
            status_rows: list[dict] = []
            current = None
            for pos, (index, it) in enumerate(queue):
                while submitted < len(queue) and submitted < pos + window:
                    futures[submitted] = pool.submit(worker, queue[submitted][1])
                    submitted += 1
                if index != current:
                    current, writer, status_rows = index, VideoShardWriter(stage_dir, index), []
                try:
                    res = futures.pop(pos).result()
                except FatalError:
                    raise  # nothing can succeed (a missing tool): stop, keeping finished shards
                except OSError as e:
                    if e.errno == errno.ENOSPC:
                        raise  # a full disk fails every item: stop, keeping finished shards
                    res = ItemResult(
                        it["id"], it.get("url"), None, f"internal_error: {type(e).__name__}: {e}", 0
                    )
                except Exception as e:  # a bug or an OS error in one item must not lose the run
                    res = ItemResult(
                        it["id"], it.get("url"), None, f"internal_error: {type(e).__name__}: {e}", 0
                    )
                if res.row is not None:
                    writer.append(res.row)
                status_rows.append(res.status)
                _count(report, [res.status])
                bar.update(1)
                bar.set_postfix(ok=report.ok, failed=report.failed, refresh=False)
                if pos + 1 == len(queue) or queue[pos + 1][0] != index:
                    try:
                        writer.commit()
                        shards.write_table_atomic(
                            shards.status_table(status_rows), shards.status_path(stage_dir, index)
                        )
                    except OSError as e:
                        writer.abort()
                        raise FatalError(
                            f"cannot write shard {index} under {stage_dir}: {e}"
                        ) from e
                    writer = None
                if report.missing is not None and res.error and res.error.startswith("missing:"):
                    report.missing.append(res.id)
    except BaseException:
        for f in locals().get("futures", {}).values():
            f.cancel()
        if locals().get("writer") is not None:
            writer.abort()
        raise
    finally:
        bar.close()
    log(report.summary())
    return report


def _count(report: DownloadReport, status_rows) -> None:
    for r in status_rows:
        if r["status"] == "ok":
            report.ok += 1
        else:
            report.failed += 1
            report.errors[(r["error"] or "unknown").split(":", 1)[0]] += 1
