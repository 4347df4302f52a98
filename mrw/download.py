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
import os
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mrw import paths, shards
from mrw.catalog import read_catalog
from mrw.descriptors import load_descriptor
from mrw.errors import FatalError, UsageError
from mrw.fetch import FetchConfig, timeout_problem
from mrw.item import ItemResult, ItemWorker
from mrw.itempool import ProcessItemPool, ThreadItemPool, WorkerDied
from mrw.media import MediaLimits, remove_stale_probes, require_ffprobe
from mrw.stage import Distribution, ShardsFailed, progress_bar, run_stage

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
    errors: Counter[str] = field(default_factory=Counter)
    missing: list[str] = field(default_factory=list)  # --from-dir: ids with no file
    retried_shards: int = 0  # --retry-failed: shards rewritten
    failed_shards: dict[int, str] = field(
        default_factory=dict
    )  # index -> error of shards never written

    def summary(self) -> str:
        lines = [
            f"{self.dataset}/{self.split}: {self.ok} ok, {self.failed} failed of {self.items} items "
            f"in {self.shards} shards ({self.skipped_shards} already complete) under {self.stage_dir}"
        ]
        if self.retried_shards:
            lines.append(f"  retried: {self.retried_shards} shards with failed items")
        for index, error in sorted(self.failed_shards.items()):
            lines.append(f"  shard {index} not written: {error}")
        for cls, n in sorted(self.errors.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {cls}: {n}")
        if self.missing:
            shown = ", ".join(self.missing[:5]) + (", ..." if len(self.missing) > 5 else "")
            lines.append(f"  missing files: {len(self.missing)} ({shown})")
        return "\n".join(lines)


# -- the split ----------------------------------------------------------------------------------
def check_options(
    workers: int = 16,
    shard_size: int = 1000,
    timeout: float = 30.0,
    retries: int = 3,
    max_bytes: int = 64 * 1024 * 1024,
    limit: int | None = None,
    per_host: int = 4,
    processes: int = 0,
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
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 0:
        raise UsageError(f"--processes must be 0 (auto) or a positive number, got {processes!r}")


def _prepare_stage_dir(stage_dir: Path) -> None:
    try:
        paths.status_dir(stage_dir).mkdir(parents=True, exist_ok=True)
        probe = stage_dir / f"{shards.TMP_PREFIX}write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write under {stage_dir}: {e.strerror or e}") from None


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


def error_class_matches(error: str | None, patterns: tuple[str, ...]) -> bool:
    """Whether a status error's class matches one of `patterns` (`x` stands for any digit, so
    `http_5xx` matches `http_500` and `http_503`); no patterns match every class."""
    if not error:
        return False
    cls = error.split(":", 1)[0]
    if not patterns:
        return True
    for pat in patterns:
        if len(pat) == len(cls) and all(
            p == c or (p == "x" and c.isdigit()) for p, c in zip(pat, cls)
        ):
            return True
    return False


def parse_only(text: str | None) -> tuple[str, ...]:
    """`--only timeout,http_5xx` -> ("timeout", "http_5xx"); None -> () (every class)."""
    if text is None:
        return ()
    classes = tuple(c.strip() for c in str(text).split(","))
    if not classes or any(not c or not c.replace("_", "").isalnum() for c in classes):
        raise UsageError(
            f"--only must be failure classes separated by commas (e.g. timeout,http_5xx), got {text!r}"
        )
    return classes


#: items a worker process must have to itself before `--processes auto` starts one more (a
#: worker takes 0.2-0.4 s of CPU to start and import what it needs)
ITEMS_PER_PROCESS = 200


def auto_processes(items: int, workers: int, per_host: int) -> int:
    """`--processes 0`: one per usable CPU, but no more than the job keeps busy, and no more than
    `--per-host` and `--workers`, which are shared out among them."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, workers, per_host, items // ITEMS_PER_PROCESS))


def even_shares(total: int, parts: int) -> list[int]:
    """`total` split into `parts` whole shares that differ by at most one."""
    return [total // parts + (k < total % parts) for k in range(parts)]


@dataclass
class _DownloadContext:
    items: list[dict]
    pool: ThreadItemPool[dict, ItemResult] | ProcessItemPool[dict, ItemResult]
    window: int

    def close(self) -> None:
        self.pool.close()


@dataclass(frozen=True)
class DownloadStage:
    """Shard `i` of a split: its catalog items fetched (or read), validated, written in order.

    With `retry_only` set, a complete shard instead re-fetches its failed items whose class
    matches (every failed item when empty) and is rewritten only when something changed."""

    stage_dir: Path
    catalog_file: Path
    limit: int | None
    shard_size: int
    from_dir: Path | None
    fetch: FetchConfig
    limits: MediaLimits
    workers: int
    retry_only: tuple[str, ...] | None = None
    stills_ok: bool = True
    #: two shards at once share the item pool, so that one's slow tail overlaps the next's start
    local_shards: int = 2
    #: worker processes of the item pool (1: threads of this process); each takes its share of
    #: `workers` and of the fetch's `per_host`, so the totals hold across them
    processes: int = 1
    num_cpus: float = 1.0
    actor_gpus: float | None = None

    def open(self) -> _DownloadContext:
        catalog = pq.read_table(self.catalog_file)
        columns = [c for c in ("id", "url", "filepath", "filename") if c in catalog.column_names]
        items = catalog.select(columns).to_pylist()
        if self.limit is not None:
            items = items[: self.limit]
        pool: ThreadItemPool[dict, ItemResult] | ProcessItemPool[dict, ItemResult]
        if self.processes <= 1:
            worker = ItemWorker(self.from_dir, self.fetch, self.limits, self.stills_ok)
            pool = ThreadItemPool(worker, self.workers, "mrw-download")
        else:
            n = min(self.processes, self.fetch.per_host, self.workers)
            makers = [
                partial(
                    ItemWorker,
                    self.from_dir,
                    replace(self.fetch, per_host=share),
                    self.limits,
                    self.stills_ok,
                )
                for share in even_shares(self.fetch.per_host, n)
            ]
            pool = ProcessItemPool(makers, even_shares(self.workers, n), "mrw-download")
        return _DownloadContext(items=items, pool=pool, window=max(4 * self.workers, 32))

    def items_of(self, items: list[dict], index: int) -> list[dict]:
        return items[index * self.shard_size : (index + 1) * self.shard_size]

    def run_shard(self, context: _DownloadContext, index: int) -> None:
        items = self.items_of(context.items, index)
        if self.retry_only is not None:
            return self._retry_shard(context, index, items)
        self._write(index, _fetch_in_order(context, items), len(items))

    def _write(self, index: int, results: Iterable[ItemResult], expected: int) -> None:
        """Rows in order into the data file, then the status file; nothing on failure."""
        writer = shards.ShardWriter(self.stage_dir, index, VIDEO_SCHEMA, PARQUET_OPTIONS, "video")
        status: list[dict] = []
        try:
            for res in results:
                if res.row is not None:
                    writer.append(res.row)
                status.append(res.status)
            if len(status) != expected:
                raise RuntimeError(f"shard {index}: {len(status)} results for {expected} items")
            writer.commit()
            shards.write_table_atomic(
                shards.status_table(status), shards.status_path(self.stage_dir, index)
            )
        except OSError as e:
            writer.abort()
            raise FatalError(f"cannot write shard {index} under {self.stage_dir}: {e}") from e
        except BaseException:
            writer.abort()
            raise

    def _retry_shard(self, context: _DownloadContext, index: int, items: list[dict]) -> None:
        done, old = _shard_done(self.stage_dir, index, [it["id"] for it in items])
        if not done:
            return
        redo = [
            pos
            for pos, r in enumerate(old)
            if r["status"] != "ok" and error_class_matches(r["error"], self.retry_only or ())
        ]
        if not redo:
            return
        fresh = dict(zip(redo, _fetch_in_order(context, [items[p] for p in redo])))
        if all(fresh[p].status == old[p] for p in redo):
            return  # failed again the same way: the shard stays as it is
        data = shards.data_path(self.stage_dir, index)
        kept = shards.iter_rows([data] if data.exists() else [], batch_size=16)

        def merged() -> Iterator[ItemResult]:
            for pos, r in enumerate(old):
                if pos in fresh:
                    yield fresh[pos]
                elif r["status"] == "ok":
                    row = next(kept)
                    if row["id"] != r["id"]:
                        raise RuntimeError(f"shard {index}: data and status disagree at {r['id']}")
                    yield ItemResult(r["id"], r["url"], row, None, r["attempts"])
                else:
                    yield ItemResult(r["id"], r["url"], None, r["error"], r["attempts"])

        self._write(index, merged(), len(items))


def _fetch_in_order(context: _DownloadContext, items: list[dict]) -> Iterator[ItemResult]:
    """Each item's result, in order, with at most `context.window` in flight."""
    pending: deque[tuple[dict, Future[ItemResult]]] = deque()
    try:
        for item in items:
            pending.append((item, context.pool.submit(item)))
            if len(pending) >= context.window:
                yield _result(*pending.popleft())
        while pending:
            yield _result(*pending.popleft())
    finally:
        for _, fut in pending:
            fut.cancel()


def _result(item: dict, future: Future[ItemResult]) -> ItemResult:
    try:
        return future.result()
    except FatalError:
        raise  # nothing can succeed (a missing tool): stop, keeping finished shards
    except WorkerDied:
        raise  # the shard fails and is retried; its items did nothing wrong that we know of
    except OSError as e:
        if e.errno == errno.ENOSPC:  # a full disk fails every item: stop, keeping finished shards
            raise FatalError(f"{e}") from e
        return ItemResult(
            item["id"], item.get("url"), None, f"internal_error: {type(e).__name__}: {e}", 0
        )
    except Exception as e:  # a bug or an OS error in one item must not lose the run
        return ItemResult(
            item["id"], item.get("url"), None, f"internal_error: {type(e).__name__}: {e}", 0
        )


@shards.holds_stage_lock(lambda a: paths.videos_dir(a["root"], a["dataset"], a["split"]))
def download_split(
    root: str | os.PathLike[str] | None = None,
    dataset: str = "mrw",
    split: str = "test",
    from_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    workers: int = 16,
    shard_size: int = 1000,
    timeout: float = 30.0,
    retries: int = 3,
    max_bytes: int = 64 * 1024 * 1024,
    per_host: int = 4,
    backoff: float = 0.5,
    allow_still: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    distribution: Distribution | None = None,
    retry_failed: bool = False,
    only: tuple[str, ...] | str | None = None,
    processes: int = 0,
) -> DownloadReport:
    """Fetch (or read `from_dir`), validate and shard every item of the split's catalog.

    `retry_failed`: instead, re-fetch the failed items (of the classes in `only`, default all) of
    complete shards and rewrite each shard that changed, as if they had succeeded at once.
    In a video dataset a single-frame file fails as `not_animated` unless `allow_still`.
    `processes`: worker processes of the item pool, sharing `workers` and `per_host` out among
    them; 0 picks one per usable CPU for jobs big enough to keep them busy (`auto_processes`).
    On Ray every shard's task runs its items in threads of its own process.
    """
    dataset, split = paths.check_dataset(dataset), paths.normalize_split(split)
    check_options(workers, shard_size, timeout, retries, max_bytes, limit, per_host, processes)
    distribution = (distribution or Distribution()).check()
    only = parse_only(only) if isinstance(only, str) or only is None else tuple(only)
    if only and not retry_failed:
        raise UsageError("--only goes with --retry-failed")
    if from_dir is not None:
        from_dir = Path(from_dir)
        if not from_dir.is_dir():
            raise UsageError(f"--from-dir {from_dir}: no such folder")
    catalog = read_catalog(root, dataset, split)
    require_ffprobe()
    num_items = catalog.num_rows if limit is None else min(limit, catalog.num_rows)
    ids = catalog.column("id").to_pylist()[:num_items]
    del catalog
    stage_dir = paths.stage_dir(root, dataset, split, "videos")
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

    ranges = shards.shard_ranges(num_items, shard_size)
    ids_of = {index: ids[lo:hi] for index, (lo, hi) in enumerate(ranges)}
    complete = {index: _shard_done(stage_dir, index, part)[0] for index, part in ids_of.items()}
    if retry_failed:
        todo = [i for i, ok in complete.items() if ok and _has_failures(stage_dir, i, only)]
    else:
        todo = [i for i, ok in complete.items() if not ok]
    if distribution.distributor == "ray":
        processes = 1  # a Ray task reserves one CPU; the cluster spreads the shards
    elif processes == 0:
        processes = auto_processes(sum(len(ids_of[i]) for i in todo), workers, per_host)
    stage = DownloadStage(
        stage_dir=stage_dir,
        catalog_file=paths.catalog_path(root, dataset, split),
        limit=num_items,
        shard_size=shard_size,
        from_dir=from_dir,
        fetch=FetchConfig(
            timeout=timeout,
            retries=retries,
            max_bytes=max_bytes,
            per_host=per_host,
            backoff=backoff,
        ),
        limits=MediaLimits(max_bytes=max_bytes),
        workers=workers,
        processes=processes,
        retry_only=only if retry_failed else None,
        stills_ok=allow_still or load_descriptor(dataset).get("modality") == "image",
    )
    written_before = {i: _stamp(shards.status_path(stage_dir, i)) for i in todo}
    bar = progress_bar(sum(len(ids_of[i]) for i in todo), "item", f"{dataset}/{split}", progress)
    try:
        done, failed = run_stage(
            stage,
            todo,
            distribution,
            on_shard=lambda i: bar.update(len(ids_of[i])),
            require_success=retry_failed,  # a retried shard has a status file before and after
        )
    finally:
        bar.close()
    report = DownloadReport(dataset, split, stage_dir, items=num_items, shards=len(ranges))
    report.skipped_shards = len(ranges) - len(todo) if not retry_failed else 0
    if retry_failed:  # shards whose failures came back the same stay as they were
        report.retried_shards = sum(
            _stamp(shards.status_path(stage_dir, i)) != written_before[i] for i in done
        )
    for index, part in ids_of.items():
        finished, rows = _shard_done(stage_dir, index, part)
        if finished:
            _count(report, rows)
    report.failed_shards = failed
    log(report.summary())
    if failed:
        raise ShardsFailed(failed, report)
    return report


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _has_failures(stage_dir: Path, index: int, only: tuple[str, ...]) -> bool:
    table = pq.read_table(shards.status_path(stage_dir, index), columns=["status", "error"])
    return any(
        st != "ok" and error_class_matches(err, only)
        for st, err in zip(table.column("status").to_pylist(), table.column("error").to_pylist())
    )


def _count(report: DownloadReport, status_rows: Iterable[dict]) -> None:
    for r in status_rows:
        if r["status"] == "ok":
            report.ok += 1
        else:
            report.failed += 1
            report.errors[(r["error"] or "unknown").split(":", 1)[0]] += 1
            if r["error"] and r["error"].startswith("missing:"):
                report.missing.append(r["id"])
