"""Atomic Parquet shards and per-item status tables, shared by every stage.

A stage (videos, frames, features) splits the catalog's items into shards: shard `i` covers
catalog rows `[i*S, (i+1)*S)`. A shard is one unit of work: it writes a data file with the rows
that succeeded and a status file with one row per covered item, each under a temporary name and
renamed, data first and status last. A shard is complete when its status file exists, so a killed
run leaves either a complete shard or nothing that counts, and a re-run redoes exactly the shards
without a status file. Shards are independent, so Spark, Ray or Dask can map over them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mrw import paths
from mrw.errors import UsageError

SHARD_PREFIX = "shard-"
MANIFEST = "_stage.json"
TMP_PREFIX = ".tmp-"
#: the names `shard_name` gives; anything else called shard-*.parquet is not ours
SHARD_NAME = re.compile(r"shard-\d{5,}\.parquet")
LOCK_SUFFIX = ".lock"
#: `<TMP_PREFIX><name>.<pid>.<8 hex digits>`, the names `temporary_path` gives
_TEMPORARY_NAME = re.compile(re.escape(TMP_PREFIX) + r".+\.(\d+)\.[0-9a-f]{8}")
#: what to do about a damaged file a stage wrote
REPAIR_HINT = (
    "run `mrw validate` to see the damage, or delete the file and rerun the stage that wrote it"
)

STATUS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("url", pa.string()),
        ("status", pa.string()),  # "ok" or "failed"
        ("error", pa.string()),  # null when ok, else "<class>: <message>"
        ("attempts", pa.int32()),
    ]
)


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}{index:05d}.parquet"


def shard_index(path: Path) -> int:
    name = Path(path).name
    if not SHARD_NAME.fullmatch(name):
        raise UsageError(_stray(Path(path)))
    return int(Path(path).stem[len(SHARD_PREFIX) :])


def _stray(path: Path) -> str:
    return (
        f"{path}: not a shard name mrw writes (shard-NNNNN.parquet): move it out of {path.parent}"
    )


def shard_ranges(num_items: int, shard_size: int) -> list[tuple[int, int]]:
    if shard_size <= 0:
        raise UsageError(f"--shard-size must be a positive integer, got {shard_size}")
    return [(s, min(s + shard_size, num_items)) for s in range(0, num_items, shard_size)]


def data_path(stage_dir: Path, index: int) -> Path:
    return Path(stage_dir) / shard_name(index)


def status_path(stage_dir: Path, index: int) -> Path:
    return paths.status_dir(stage_dir) / shard_name(index)


def temporary_path(path: Path) -> Path:
    """A unique temporary name beside `path` (the writer's pid in it), cleared by
    `remove_temporaries` after a killed run."""
    path = Path(path)
    return path.parent / f"{TMP_PREFIX}{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(path: Path | str, *, fsync: bool = False) -> Iterator[Path]:
    """A temporary name beside `path` for the block to write (a file or a folder); renamed over
    `path` when the block ends normally and removed when it raises, so `path` is never
    half-written. With `fsync`, a written file reaches the disk before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        if fsync and tmp.is_file():
            _fsync(tmp)
        os.replace(tmp, path)
    finally:
        _remove_path(tmp)


def write_bytes_atomic(data: bytes, path: Path | str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(text: str, path: Path | str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(obj: object, path: Path | str) -> None:
    write_text_atomic(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def temporary_owner(path: Path) -> int | None:
    """The pid in a `temporary_path` name, or None for a name it did not give."""
    match = _TEMPORARY_NAME.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def write_table_atomic(table: pa.Table, path: Path | str, **parquet_options: Any) -> None:
    """Write a Parquet file under a temporary name, fsync it, then rename it over `path`."""
    with atomic_path(path, fsync=True) as tmp:
        pq.write_table(table, tmp, **parquet_options)


def status_table(rows: Sequence[dict]) -> pa.Table:
    return pa.Table.from_pylist(
        [{k: r.get(k) for k in STATUS_SCHEMA.names} for r in rows], schema=STATUS_SCHEMA
    )


#: a shard's data is cut into Parquet row groups of about this many bytes, so that a reader can
#: fetch one item by reading one small row group (mrw.loader's `ds[i]`), not the whole shard
ROW_GROUP_BYTES = 1 << 20


def row_group_rows(table: pa.Table, target_bytes: int = ROW_GROUP_BYTES) -> int:
    """Rows per row group so that each holds about `target_bytes` (at least one row)."""
    if not table.num_rows:
        return 1
    per_row = max(1, table.nbytes // table.num_rows)
    return int(max(1, min(table.num_rows, target_bytes // per_row)))


def _is_blob(type_: pa.DataType) -> bool:
    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        type_ = type_.value_type
    return pa.types.is_binary(type_) or pa.types.is_large_binary(type_)


def write_shard(
    stage_dir: Path,
    index: int,
    data: pa.Table | None,
    status_rows: Sequence[dict],
    **parquet_options: Any,
) -> None:
    """Commit one shard: its data rows (if any succeeded) first, its status rows last.

    Unless `row_group_size` is given, row groups hold about `ROW_GROUP_BYTES` each; unless
    `use_dictionary` is given, binary columns (media, features: every value unique) are written
    without a dictionary, which makes them several times faster to read.
    """
    if data is not None and data.num_rows:
        parquet_options.setdefault("row_group_size", row_group_rows(data))
        parquet_options.setdefault(
            "use_dictionary", [f.name for f in data.schema if not _is_blob(f.type)]
        )
        write_table_atomic(data, data_path(stage_dir, index), **parquet_options)
    else:
        stale = data_path(stage_dir, index)
        if stale.exists():
            stale.unlink()
    write_table_atomic(status_table(status_rows), status_path(stage_dir, index))


class ShardWriter:
    """Appends rows in order to a temporary Parquet file; `commit` renames it into place.

    Row groups close at about `ROW_GROUP_BYTES` (estimated from `blob_column`'s bytes), a
    function of the rows alone, so the same rows always give the same bytes. The temporary file
    exists from the first row on, so a shard being written can be seen (and a killed writer's
    leftovers cleared)."""

    def __init__(
        self, stage_dir: Path, index: int, schema: pa.Schema, options: dict, blob_column: str
    ):
        self.path = data_path(stage_dir, index)
        self.tmp = temporary_path(self.path)
        self.schema, self.options, self.blob_column = schema, options, blob_column
        self._writer: pq.ParquetWriter | None = None
        self._rows: list[dict] = []
        self._bytes = 0
        self.count = 0

    def append(self, row: dict) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.tmp, self.schema, **self.options)
        self._rows.append(row)
        self._bytes += len(row[self.blob_column]) + 256
        self.count += 1
        if self._bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._rows or self._writer is None:
            return
        table = pa.Table.from_pylist(self._rows, schema=self.schema)
        self._writer.write_table(table, row_group_size=len(self._rows))
        self._rows, self._bytes = [], 0

    def commit(self) -> None:
        """Rename the data into place; with no rows, no data file (as `write_shard` does)."""
        self._flush()
        if self._writer is None:
            self.path.unlink(missing_ok=True)
            return
        self._writer.close()
        _fsync(self.tmp)
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):  # the file goes anyway
                self._writer.close()
        self.tmp.unlink(missing_ok=True)


def is_shard_complete(stage_dir: Path, index: int) -> bool:
    return status_path(stage_dir, index).exists()


def remove_temporaries(stage_dir: Path) -> int:
    """Delete what a killed run left half-written; returns how many files went."""
    n = 0
    for folder in (Path(stage_dir), paths.status_dir(stage_dir)):
        if folder.is_dir():
            for p in folder.glob(f"{TMP_PREFIX}*"):
                p.unlink(missing_ok=True)
                n += 1
    return n


def _shard_files(folder: Path) -> list[Path]:
    files = sorted(Path(folder).glob(f"{SHARD_PREFIX}*.parquet"))
    for p in files:
        if not SHARD_NAME.fullmatch(p.name):
            raise UsageError(_stray(p))
    return files


def data_shards(stage_dir: Path) -> list[Path]:
    return _shard_files(Path(stage_dir))


def status_shards(stage_dir: Path) -> list[Path]:
    return _shard_files(paths.status_dir(stage_dir))


def damaged(path: Path, error: BaseException, hint: str = REPAIR_HINT) -> UsageError:
    """The one-line error for a file the pipeline wrote that does not read back."""
    text = " ".join(str(error).split())[:160] or type(error).__name__
    return UsageError(f"{path}: damaged or not a Parquet file ({text}): {hint}")


def read_parquet(path: Path, hint: str = REPAIR_HINT, **options: Any) -> pa.Table:
    """`pq.read_table`, with a damaged file reported as one UsageError naming it."""
    try:
        return pq.read_table(path, **options)
    except (pa.ArrowException, OSError, ValueError) as e:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise
        raise damaged(Path(path), e, hint) from None


def read_status(stage_dir: Path) -> pa.Table:
    files = status_shards(stage_dir)
    if not files:
        return STATUS_SCHEMA.empty_table()
    hint = "delete it and rerun the stage (only that shard is redone)"
    return pa.concat_tables(read_parquet(f, hint, schema=STATUS_SCHEMA) for f in files)


def check_manifest(stage_dir: Path, settings: dict) -> None:
    """Record the settings a stage was built with; refuse to mix shards built with others."""
    path = Path(stage_dir) / MANIFEST
    settings = json.loads(json.dumps(settings))
    old = read_manifest(stage_dir)
    if old is not None:
        if old != settings:
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise UsageError(
                f"{stage_dir} was built with other settings ({', '.join(diff)}): "
                "use the same settings or remove that folder"
            )
        return
    write_json_atomic(settings, path)


def read_manifest(stage_dir: Path) -> dict | None:
    """The stage's recorded settings, None when it has none; a damaged one is a UsageError."""
    path = Path(stage_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        obj = e
    if not isinstance(obj, dict):
        what = f"not valid JSON ({obj})" if isinstance(obj, Exception) else "not a JSON object"
        raise UsageError(
            f"{path}: damaged stage settings, {what}: delete it and rerun the stage with the "
            "settings it was built with (or remove the folder to start over)"
        )
    return obj


def iter_rows(
    paths: Iterable[Path], columns: Sequence[str] | None = None, batch_size: int = 64
) -> Iterator[dict]:
    """Stream rows as dicts, one record batch at a time (bounded memory); a damaged file is one
    UsageError naming it."""
    for p in paths:
        try:
            pf = pq.ParquetFile(p)
            batches = pf.iter_batches(batch_size=batch_size, columns=columns)
            for batch in batches:
                yield from batch.to_pylist()
        except (pa.ArrowException, OSError, ValueError) as e:
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                raise
            raise damaged(Path(p), e) from None


# -- one run per stage folder -------------------------------------------------------------------
def lock_path(stage_dir: Path) -> Path:
    """The lock of a stage folder, beside it (a folder that was never started stays absent)."""
    stage_dir = Path(stage_dir)
    return stage_dir.with_name(stage_dir.name + LOCK_SUFFIX)


@contextlib.contextmanager
def stage_lock(stage_dir: Path) -> Iterator[Path]:
    """Hold the stage folder's lock for a run; a second run gets a UsageError naming the holder.

    An advisory `flock` on the lock file: the kernel drops it when the holder dies, so the lock of
    a killed run is taken over by the next one. The file records the holder's pid, host and start
    time for the message."""
    path = lock_path(stage_dir)
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise
            raise UsageError(f"cannot write under {path.parent}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise UsageError(
                f"{stage_dir} is in use by another run ({holder}): wait for it to end or stop "
                "it, then rerun"
            ) from None
        try:  # the holder may have removed the file between our open and our flock
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def _lock_holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {record['pid']} on {record['host']}, started {record['started']}"
    except (ValueError, KeyError, TypeError, OSError):
        return "a run that is just starting"


def holds_stage_lock(stage_dir_of: Callable[[dict], Path]) -> Callable:
    """Decorate a stage's run function: `stage_dir_of(arguments)` names the folder whose lock
    the whole call holds."""

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with stage_lock(stage_dir_of(bound.arguments)):
                return fn(*args, **kwargs)

        return run

    return decorate


# -- scratch files of killed runs -------------------------------------------------------------------
def remove_stale_scratch(folder: Path, prefix: str) -> int:
    """Delete `<folder>/<prefix><pid>-*` files and folders whose process is gone; returns how
    many went."""
    n = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for p in folder.glob(f"{prefix}*"):
        pid = p.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                _remove_path(p)
            if not p.exists():
                n += 1
    return n


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
