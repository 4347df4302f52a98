"""Reading row groups: one at a time for `ds[i]` (from the memory-mapped shard, or from its
uncompressed Arrow copy with `arrow_cache=True`), many ahead for sequential reading."""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mrw.errors import UsageError
from mrw.loader.buffers import Spare, binary_views, converted, half_view, one_chunk
from mrw.loader.index import SplitIndex, unreadable_shard
from mrw.shards import atomic_path

#: sequential reading makes items from this many row groups (of about 1 MiB,
#: `mrw.shards.ROW_GROUP_BYTES`) at a time, converted in one call, while pyarrow reads as many
#: ahead: fewer calls per item, memory still bounded
SEQUENTIAL_GROUPS = 16
#: where `arrow_cache=True` keeps the uncompressed Arrow copy of a stage's shards
ARROW_CACHE_DIR = ".arrow"
_SOURCE_KEY = b"mrw.source"


class RowGroup:
    """One row group (or several consecutive ones, from `first_group` on) read from a shard.

    A row group read for one item reads single values from it; one that serves many (kept from
    an Arrow copy, `indexed=True`) or sequential reading (`prepare()`) turns its columns once
    into arrays that every row slices without a copy.
    """

    def __init__(
        self, table: pa.Table | pa.RecordBatch, first_group: int = 0, indexed: bool = False
    ):
        self.table = table
        self.first_group = first_group
        self.indexed = indexed
        self.prepared = False
        # (catalog rows, ids, sentences, protocol sentences), when prepared
        self.catalog: tuple[list, list, list, list] | None = None
        self.handed: set = set()  # (column, row) whose converted view an item holds
        self._whole: dict = {}  # float16 column -> [rows, dim] views of every row converted

    @cached_property
    def ids(self) -> list:
        return self.table.column("id").to_pylist()

    @cached_property
    def counts(self) -> dict[str, list[int]]:
        return {
            name: self.table.column(name).to_numpy().tolist()
            for name in ("num_frames", "dim")
            if name in self.table.column_names
        }

    @cached_property
    def _stamps(self) -> tuple[np.ndarray, np.ndarray]:
        arr = one_chunk(self.table.column("timestamps"))
        return arr.flatten().to_numpy(zero_copy_only=False), arr.offsets.to_numpy()

    def timestamps(self, row: int) -> np.ndarray:
        """A row's timestamps (read-only; copy before handing out)."""
        if not self.indexed:
            value = self.table.column("timestamps")[row]
            return value.values.to_numpy(zero_copy_only=False) if value.is_valid else np.zeros(0)
        values, offsets = self._stamps
        return values[offsets[row] : offsets[row + 1]]

    def scalar(self, name: str, row: int) -> Any:
        return self.table.column(name)[row].as_py()

    def binary(self, name: str, row: int) -> pa.Buffer | None:
        """One row of a binary column as an Arrow buffer (no copy); None for a null."""
        value = self.table.column(name)[row]
        return value.as_buffer() if value.is_valid else None

    @cached_property
    def _halves(self) -> dict:
        return {
            name: binary_views(one_chunk(self.table.column(name)))
            for name in ("features", "grid")
            if name in self.table.column_names
        }

    def half(self, name: str, row: int) -> torch.Tensor | None:
        """A row of a float16 column as a flat read-only view (no copy), or None."""
        if self.indexed:
            data, offsets = self._halves[name]
            if data is not None:
                return data[int(offsets[row]) >> 1 : int(offsets[row + 1]) >> 1]
        return half_view(self.binary(name, row))

    def nbytes(self, name: str, row: int) -> int:
        buf = self.binary(name, row)
        return 0 if buf is None else buf.size

    def prepare(self, dtype: torch.dtype, spare: Spare | None) -> RowGroup:
        """Convert every float16 column now, one call each, so that items are views into it."""
        for name in ("features", "grid"):
            if name in self.table.column_names:
                self._whole[name] = self._convert_all(name, dtype, spare)
        self.prepared = self.indexed = True
        return self

    def whole(self, name: str) -> tuple | None:
        return self._whole.get(name)

    def _convert_all(self, name: str, dtype: torch.dtype, spare: Spare | None) -> tuple | None:
        """Every row of a float16 column converted in one go and split into [rows, dim] views,
        or None when the rows don't all have the shape their `num_frames` and `dim` say (then
        each row is read on its own, which reports the bad one)."""
        type_ = self.table.schema.field(name).type
        if not (pa.types.is_binary(type_) or pa.types.is_large_binary(type_)):
            return None
        chunks = [binary_views(c) for c in self.table.column(name).chunks]
        dims = np.asarray(self.counts.get("dim", []))
        rows = len(dims)
        counts = np.full(rows, 49) if name == "grid" else np.asarray(self.counts["num_frames"])
        sizes = np.concatenate([np.diff(offsets) for _, offsets in chunks] or [np.zeros(0)])
        views = [data for data, _ in chunks if data is not None]
        if not (
            len(views) == len(chunks)
            and rows
            and (dims == dims[0]).all()
            and dims[0] > 0
            and np.array_equal(sizes, 2 * counts.astype(np.int64) * dims)
        ):
            return None
        whole = converted(
            [
                data[int(offsets[0]) >> 1 : int(offsets[-1]) >> 1]
                for data, (_, offsets) in zip(views, chunks)
            ],
            dtype,
            spare,
        )
        return torch.split(whole.view(-1, int(dims[0])), counts.tolist())


# -- the uncompressed Arrow copy (`arrow_cache=True`) ---------------------------------------------
def _source_stamp(path: str) -> bytes:
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}".encode()


def arrow_copy(index: SplitIndex, shard: int) -> Path:
    """The shard's index columns as an uncompressed Arrow IPC file, one record batch per row
    group (built on first use, again whenever the shard changes; written under a temporary name
    and renamed, a row group at a time, so memory stays bounded)."""
    source = index.shard_paths[shard]
    target = Path(source).parent / ARROW_CACHE_DIR / (Path(source).stem + ".arrow")
    stamp = _source_stamp(source)
    try:
        with pa.memory_map(str(target)) as f:
            if pa.ipc.open_file(f).schema.metadata.get(_SOURCE_KEY) == stamp:
                return target
    except (OSError, pa.ArrowException, AttributeError):
        pass  # absent, stale or unreadable: build it again
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(target) as tmp:
            pf = pq.ParquetFile(source, memory_map=True)
            schema = pf.schema_arrow
            schema = pa.schema([schema.field(c) for c in index.columns]).with_metadata(
                {_SOURCE_KEY: stamp}
            )
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                for g in range(pf.num_row_groups):
                    table = pf.read_row_group(g, columns=index.columns, use_threads=False)
                    writer.write_batch(
                        table.combine_chunks().to_batches()[0]
                        if table.num_rows
                        else pa.RecordBatch.from_pylist([], schema=schema)
                    )
    except (pa.ArrowException, OSError) as e:
        raise UsageError(
            unreadable_shard(source, e, index.dataset, index.split, index.command)
        ) from None
    return target


class OpenFiles:
    """Open shards (and Arrow copies) and the last row group read, for one process only.

    After a fork (DataLoader workers) the child sees another pid and opens its own files.
    """

    def __init__(self, max_open: int = 64):
        self.pid = os.getpid()
        self.max_open = max_open
        self.files: OrderedDict[str, object] = OrderedDict()
        self.last_key: tuple[str, int, tuple[str, ...], bool] | None = None
        self.last_group: RowGroup | None = None
        # shard -> [its Arrow copy's reader, then each row group, made on first use]
        self.batches: dict[str, list] = {}
        self.spare = Spare()  # conversion buffers for sequential reading

    def _open(self, key: str, opener: Callable[[], Any]) -> Any:
        handle = self.files.pop(key, None) or opener()
        self.files[key] = handle
        while len(self.files) > self.max_open:
            gone, _ = self.files.popitem(last=False)
            self.batches.pop(gone.removeprefix("ipc:"), None)
        return handle

    def row_group(self, index: SplitIndex, shard: int, group: int, arrow: bool) -> RowGroup:
        path = index.shard_paths[shard]
        key = (path, group, tuple(index.columns), arrow)
        if key == self.last_key and self.last_group is not None:
            return self.last_group
        try:
            if arrow:
                reader = self._open(
                    "ipc:" + path,
                    lambda: pa.ipc.open_file(pa.memory_map(str(arrow_copy(index, shard)))),
                )
                groups = self.batches.get(path)
                if groups is None or groups[0] is not reader:
                    groups = self.batches[path] = [reader] + [None] * reader.num_record_batches
                if groups[group + 1] is None:  # views into the mapped file: no data copied
                    groups[group + 1] = RowGroup(reader.get_batch(group), group, indexed=True)
                self.last_key, self.last_group = key, groups[group + 1]
                return self.last_group
            else:
                pf = self._open(path, lambda: pq.ParquetFile(path, memory_map=True))
                table = pf.read_row_group(group, columns=index.columns, use_threads=False)
        except (pa.ArrowException, OSError) as e:
            raise UsageError(
                unreadable_shard(path, e, index.dataset, index.split, index.command)
            ) from None
        self.last_key, self.last_group = key, RowGroup(table, group)
        return self.last_group


# -- sequential reading ------------------------------------------------------------------------
def sequential_runs(
    index: SplitIndex, positions: np.ndarray
) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """Cut positions (in reading order) into runs that lie in one shard within
    SEQUENTIAL_GROUPS consecutive row groups: (shard, first group, last group, positions)."""
    shards, groups = index.shard[positions], index.row_group[positions]
    i, n = 0, len(positions)
    while i < n:
        s, g0 = shards[i], groups[i]
        j = i + 1
        while j < n and shards[j] == s and g0 <= groups[j] < g0 + SEQUENTIAL_GROUPS:
            j += 1
        yield int(s), int(g0), int(groups[i:j].max()), positions[i:j]
        i = j


def scan(jobs: list[tuple]) -> Iterator[tuple[tuple, pa.Table]]:
    """`(job, table)` for each job `(index, shard, first, last, positions, ...)`, in order: row groups
    `first..last` of that shard, with the index's columns. pyarrow's dataset scanner reads them
    on its own threads, SEQUENTIAL_GROUPS row groups ahead, without the GIL, while the caller
    makes items from the last table (memory-mapped; read ahead is bounded)."""
    import pyarrow.dataset as pads
    from pyarrow import fs as pafs

    filesystem, fmt = pafs.LocalFileSystem(use_mmap=True), pads.ParquetFileFormat()

    def scanned(
        index: SplitIndex, part: list[tuple]
    ) -> Iterator[pa.RecordBatch]:  # a generator, so that opening errors surface where reads do
        fragments = [
            fmt.make_fragment(
                index.shard_paths[s], filesystem=filesystem, row_groups=list(range(first, last + 1))
            )
            for _, s, first, last, *_ in part
        ]
        dataset = pads.FileSystemDataset(
            fragments, schema=fragments[0].physical_schema, format=fmt, filesystem=filesystem
        )
        yield from dataset.to_batches(
            columns=index.columns,
            batch_size=1 << 24,
            batch_readahead=SEQUENTIAL_GROUPS,
            fragment_readahead=2,
            use_threads=True,
        )

    for _, run_jobs in itertools.groupby(jobs, key=lambda job: id(job[0])):
        part = list(run_jobs)
        index = part[0][0]
        batches = scanned(index, part)
        for job in part:
            _, s, first, last, *_ = job
            want = sum(index.group_rows(s, g) for g in range(first, last + 1))
            got = []
            while want > 0:
                try:
                    batch = next(batches, None)
                except (pa.ArrowException, OSError) as e:  # a row group gone, a file cut short
                    raise UsageError(
                        f"{index.directory}: {str(e).splitlines()[0][:300]}; the "
                        "shards changed after the split was opened"
                    ) from None
                if batch is None:
                    break
                if batch.num_rows:
                    got.append(batch)
                    want -= batch.num_rows
            if want != 0:
                raise UsageError(
                    f"{index.shard_paths[s]}: {'fewer' if want > 0 else 'more'} rows "
                    "than its metadata says; the shards changed after the split was opened"
                )
            yield job, pa.Table.from_batches(got)


def rows_of(index: SplitIndex, first: int, positions: np.ndarray) -> list[int]:
    """Where items `positions` (all in one shard, in row groups from `first` on) sit in the table
    that `scan` reads for them."""
    starts = np.asarray(index.group_start[int(index.shard[positions[0]])])
    return (
        starts[index.row_group[positions]] - starts[first] + index.row_in_group[positions]
    ).tolist()
