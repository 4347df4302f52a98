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
import json
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mrw import paths
from mrw.errors import UsageError

SHARD_PREFIX = "shard-"
MANIFEST = "_stage.json"
TMP_PREFIX = ".tmp-"

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
    return int(Path(path).stem[len(SHARD_PREFIX) :])


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


def write_table_atomic(table: pa.Table, path: Path, **parquet_options) -> None:
    """Write to a temporary name in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        pq.write_table(table, tmp, **parquet_options)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
    **parquet_options,
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
        with open(self.tmp, "rb") as fh:
            os.fsync(fh.fileno())
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


def data_shards(stage_dir: Path) -> list[Path]:
    return sorted(Path(stage_dir).glob(f"{SHARD_PREFIX}*.parquet"))


def status_shards(stage_dir: Path) -> list[Path]:
    return sorted(paths.status_dir(stage_dir).glob(f"{SHARD_PREFIX}*.parquet"))


def read_status(stage_dir: Path) -> pa.Table:
    files = status_shards(stage_dir)
    if not files:
        return STATUS_SCHEMA.empty_table()
    return pa.concat_tables(pq.read_table(f, schema=STATUS_SCHEMA) for f in files)


def check_manifest(stage_dir: Path, settings: dict) -> None:
    """Record the settings a stage was built with; refuse to mix shards built with others."""
    path = Path(stage_dir) / MANIFEST
    settings = json.loads(json.dumps(settings))
    if path.exists():
        old = json.loads(path.read_text())
        if old != settings:
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise UsageError(
                f"{stage_dir} was built with other settings ({', '.join(diff)}): "
                "use the same settings or remove that folder"
            )
        return
    write_json_atomic(settings, path)


def read_manifest(stage_dir: Path) -> dict | None:
    path = Path(stage_dir) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def iter_rows(paths: Iterable[Path], columns: Sequence[str] | None = None, batch_size: int = 64):
    """Stream rows as dicts, one record batch at a time (bounded memory)."""
    for p in paths:
        pf = pq.ParquetFile(p)
        for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
            yield from batch.to_pylist()
