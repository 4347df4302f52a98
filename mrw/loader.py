"""`load_dataset`: a split's catalog and one stage's shards as a torch Dataset.

Nothing is copied: opening a split reads the catalog and the `id` column of each complete shard
and keeps, for every item, where its row sits (shard, row group, row). `ds[i]` then reads one
row group of one shard (stages write row groups of about 1 MiB, `mrw.shards.ROW_GROUP_BYTES`).
Open Parquet files are cached per process and dropped after a fork or a pickle, so DataLoader
workers never share a handle. Items come in catalog order; items without a row in the stage
(failed downloads) are skipped, and `.ids` says which items are there.

    >>> from mrw import load_dataset
    >>> ds = load_dataset("mrw", split="test", modality="features", num_frames=8)
    >>> item = ds[0]        # {"id", "sentences", "sentence", "sentence_id", "features", ...}
"""

from __future__ import annotations

import bisect
import io
import itertools
import math
import os
import random
import re
import sys
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from mrw import paths
from mrw.catalog import read_catalog
from mrw.errors import UsageError
from mrw.shards import data_path, read_manifest, read_status, shard_index, status_shards

MODALITIES = ("features", "frames", "video")
SAMPLINGS = ("uniform", "random")
#: the reference loader drew a random skip of 1 to MAX_RAND_FRAME_SKIP frames for training
MAX_RANDOM_SKIP = 3
#: frames the reference loader dropped at each end of a TGIF clip in uniform sampling
EDGE_FRAMES = {"mrw": 0, "tgif": 6, "coco": 0}

#: columns each modality reads from its stage's shards (beyond `id`)
_STAGE_COLUMNS = {
    "features": ["features", "num_frames", "dim", "timestamps"],
    "frames": ["frames", "timestamps", "num_frames", "width", "height"],
    "video": ["video", "format", "sha256", "num_frames", "fps", "width", "height", "duration"],
}


#: the stage's small per-item columns that `to_pandas()` shows beside the catalog's
_PER_ITEM_NUMBERS = ("num_frames", "dim", "format", "sha256", "fps", "width", "height", "duration")


# -- split specs: "train", "train[:10%]", "test[100:200]", "train[:10%]+val" -----------------------
_SPEC = re.compile(r"^(?P<split>\w+)(?:\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")


@dataclass(frozen=True)
class SplitSlice:
    split: str
    start: str | None = None
    stop: str | None = None

    def bounds(self, n: int) -> slice:
        """Python slice bounds over `n` items; percentages of `n` are rounded to the nearest item."""
        return slice(_bound(self.start, n), _bound(self.stop, n))


def _bound(text: str | None, n: int) -> int | None:
    if text is None:
        return None
    if text.endswith("%"):
        pct = int(text[:-1])
        return int(math.copysign(math.floor(abs(pct) * n / 100 + 0.5), pct))
    return int(text)


def parse_split(spec: str) -> list[SplitSlice]:
    """Parse a Hugging Face style split spec into the slices it concatenates."""
    parts = []
    for raw in str(spec).replace(" ", "").split("+"):
        m = _SPEC.match(raw)
        if not m:
            raise UsageError(
                f"bad split {spec!r}: expected e.g. 'train', 'train[:10%]', "
                "'test[100:200]' or 'train[:10%]+val'"
            )
        for b in (m["start"], m["stop"]):
            if b and b.endswith("%") and abs(int(b[:-1])) > 100:
                raise UsageError(f"bad split {spec!r}: a percentage must lie within -100% and 100%")
        parts.append(SplitSlice(paths.normalize_split(m["split"]), m["start"], m["stop"]))
    return parts


# -- frame sampling ----------------------------------------------------------------------------
def sample_frame_indices(
    total: int,
    num_frames: int | None,
    sampling: str = "uniform",
    edge: int = 0,
    rng: random.Random | None = None,
) -> list[int]:
    """Which of a clip's `total` frames to take, as the reference loader chose them.

    - `num_frames=None`: every frame, in order.
    - `uniform` (evaluation): equal intervals from frame `edge` to `total - edge` (the edges
      are kept when the clip is too short to drop them), the first `num_frames` of them;
    - `random` (training): a random skip of 1 to 3 and a random start, `num_frames` frames on.
    Short clips repeat their last frame up to `num_frames`.
    """
    if total <= 0:
        return []
    if num_frames is None:
        return list(range(total))
    rng = rng or random
    if sampling == "random":
        skip = rng.randint(1, MAX_RANDOM_SKIP)
        start = rng.randint(0, max(0, total - skip * num_frames))
        idx = list(range(start, min(total, start + skip * num_frames), skip))
    else:
        start, end = (edge, total - edge) if total > 2 * edge else (0, total)
        skip = max(1, (end - start + 1) // num_frames)
        idx = list(range(start, end, skip))[:num_frames]
    return idx + [idx[-1]] * (num_frames - len(idx))


def stage_command(dataset: str, split: str, modality: str, backbone: str = "resnet152") -> str:
    """The command that builds a split's stage for a modality."""
    if modality == "video":
        return f"mrw download --dataset {dataset} --split {split}"
    if modality == "frames":
        return f"mrw extract-frames --dataset {dataset} --split {split}"
    extra = "" if backbone == "resnet152" else f" --backbone {backbone}"
    return f"mrw extract-features --dataset {dataset} --split {split}{extra}"


def stage_dir(root, dataset: str, split: str, modality: str, backbone: str = "resnet152") -> Path:
    if modality == "video":
        return paths.videos_dir(root, dataset, split)
    if modality == "frames":
        return paths.frames_dir(root, dataset, split)
    return paths.features_dir(root, dataset, split, backbone)


def _source_dir(
    root, dataset: str, split: str, modality: str, manifest: dict | None
) -> Path | None:
    """The stage a stage was built from (videos for frames; frames or videos for features)."""
    if modality == "video":
        return None
    if modality == "features" and (manifest or {}).get("source") == "frames":
        return paths.frames_dir(root, dataset, split)
    return paths.videos_dir(root, dataset, split)


# -- one split's index -------------------------------------------------------------------------
@dataclass
class SplitIndex:
    """A split's catalog and, for each item with a row in the stage, where that row sits.

    Everything is kept in Arrow and NumPy arrays (no per-item Python objects), so forked
    DataLoader workers don't grow their memory by touching reference counts.
    """

    root: Path
    dataset: str
    split: str
    modality: str
    directory: Path
    columns: list[str]  # what an item reads from a row group
    catalog: pa.Table  # id, sentences, protocol_sentences: all catalog rows
    shard_paths: list[str]
    rows: np.ndarray  # catalog row of each available item, in catalog order
    shard: np.ndarray  # index into shard_paths
    row_group: np.ndarray
    row_in_group: np.ndarray
    shard_row: np.ndarray  # row within the whole shard file
    row_catalog: np.ndarray  # for every shard row, shards in order: its catalog row, or -1
    shard_start: np.ndarray  # where each shard's rows start in row_catalog
    group_start: list  # per shard: where each row group's rows start within the shard
    counts: dict = field(default_factory=dict)
    manifest: dict | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def open(cls, root, dataset: str, split: str, modality: str, backbone: str) -> SplitIndex:
        catalog = read_catalog(
            root, dataset, split, columns=["id", "sentences", "protocol_sentences"]
        )
        directory = stage_dir(root, dataset, split, modality, backbone)
        command = stage_command(dataset, split, modality, backbone)
        statuses = status_shards(directory)
        if not statuses:
            raise UsageError(
                f"no {modality} for {dataset}/{split} under {paths.resolve_root(root)}: "
                f"run `{command}` first"
            )
        status = read_status(directory)
        n_ok = pc.sum(pc.equal(status.column("status"), "ok")).as_py() or 0
        manifest = read_manifest(directory)
        # items the stage should have a status row for: the ones its source stage got right
        source = _source_dir(root, dataset, split, modality, manifest)
        if source is None or not status_shards(source):  # no record of the source: all of it
            due = catalog.column("id")
        else:
            up = read_status(source)
            due = up.filter(pc.equal(up.column("status"), "ok")).column("id")
        missing = int(pc.sum(pc.invert(pc.is_in(due, value_set=status.column("id")))).as_py() or 0)
        if missing > 0:
            warnings.warn(
                f"{missing} of {catalog.num_rows} items of {dataset}/{split} have no "
                f"{modality} status yet (an unfinished run?): `{command}` finishes it",
                stacklevel=3,
            )
        needed = ["id"] + _STAGE_COLUMNS[modality]
        columns = list(needed)
        shard_paths, shard_ids, group_sizes = [], [], []
        for status_file in statuses:  # a shard counts once its status file exists
            path = data_path(directory, shard_index(status_file))
            if not path.exists():
                continue  # every item of this shard failed
            pf = pq.ParquetFile(path)
            absent = [c for c in needed if c not in pf.schema_arrow.names]
            if absent:
                raise UsageError(
                    f"{path}: not a {modality} shard (no column {', '.join(absent)}); "
                    f"remove it and run `{command}`"
                )
            if modality == "features" and "grid" in pf.schema_arrow.names and "grid" not in columns:
                columns.append("grid")  # images: the 7x7 map beside the pooled vector
            shard_paths.append(str(path))
            shard_ids.append(pf.read(columns=["id"]).column("id"))
            group_sizes.append(
                np.array(
                    [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)], np.int64
                )
            )
        sizes = np.array([len(ids) for ids in shard_ids], np.int64)
        shard_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        group_start = [
            np.concatenate([[0], np.cumsum(g)[:-1]]).astype(np.int64) for g in group_sizes
        ]
        shard = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
        shard_row = np.arange(int(shard_start[-1]), dtype=np.int64) - shard_start[shard]
        group = np.concatenate(
            [np.repeat(np.arange(len(g), dtype=np.int32), g) for g in group_sizes]
            or [np.zeros(0, np.int32)]
        )
        within = (
            shard_row
            - np.concatenate(
                [np.repeat(gs, g) for gs, g in zip(group_start, group_sizes)]
                or [np.zeros(0, np.int64)]
            )
        ).astype(np.int32)
        all_ids = pa.chunked_array([c for ids in shard_ids for c in ids.chunks], type=pa.string())
        # the catalog row of each shard row; rows whose id the catalog lacks are ignored
        cat_row = pc.fill_null(pc.index_in(all_ids, value_set=catalog.column("id")), -1)
        cat_row = cat_row.to_numpy().astype(np.int64)
        keep = np.flatnonzero(cat_row >= 0)
        order = keep[np.argsort(cat_row[keep], kind="stable")]
        rows = cat_row[order]
        if len(rows) > 1 and np.any(rows[1:] == rows[:-1]):
            dup = catalog.column("id")[int(rows[1:][rows[1:] == rows[:-1]][0])].as_py()
            raise UsageError(
                f"{directory}: item {dup!r} appears in more than one row; "
                f"run `mrw validate --dataset {dataset} --split {split}`"
            )
        return cls(
            root=paths.resolve_root(root),
            dataset=dataset,
            split=split,
            modality=modality,
            directory=directory,
            columns=columns,
            catalog=catalog.combine_chunks(),
            shard_paths=shard_paths,
            rows=rows,
            shard=shard[order],
            row_group=group[order],
            row_in_group=within[order],
            shard_row=shard_row[order],
            row_catalog=cat_row,
            shard_start=shard_start,
            group_start=group_start,
            counts={
                "catalog": catalog.num_rows,
                "ok": int(n_ok),
                "failed": int(status.num_rows - n_ok),
                "no_status": max(0, int(missing)),
                "available": len(rows),
            },
            manifest=manifest,
        )


class _RowGroup:
    """One row group read from a shard, its columns turned once into arrays that every row of
    the group slices without a copy (the Python work per item stays small)."""

    def __init__(self, table: pa.Table, first_group: int | None = None):
        self.table = table
        self.first_group = first_group  # when the table holds several row groups from this one on
        self.ids = table.column("id").to_pylist()
        self.chunks = {}  # float16 column -> [(float16 tensor over a chunk's data, byte offsets)]
        self._binary = {}  # float16 column -> the same over one chunk, made on first use
        self.lists = {}  # column -> (values, offsets)
        for name in table.column_names:
            type_ = table.schema.field(name).type
            if name in ("features", "grid") and (
                pa.types.is_binary(type_) or pa.types.is_large_binary(type_)
            ):
                self.chunks[name] = [_binary_views(c) for c in table.column(name).chunks]
            elif name == "timestamps" and pa.types.is_list(type_):
                arr = _one_chunk(table.column(name))
                self.lists[name] = (
                    arr.flatten().to_numpy(zero_copy_only=False),
                    arr.offsets.to_numpy(),
                )
        self.numbers = {
            name: table.column(name).to_numpy()
            for name in ("num_frames", "dim")
            if name in table.column_names
        }
        self.counts = {name: values.tolist() for name, values in self.numbers.items()}
        self.catalog = (
            None  # (catalog ids, sentences, protocol sentences) of its rows, on first use
        )
        self.uses = 0  # items made from this row group so far
        self._whole: dict = {}  # (column, dtype) -> every row converted at once, or None
        self.handed_out: set = set()  # (column, row) whose converted view an item holds
        self.prepared = False  # every float16 column converted already (sequential reading)

    def prepare(self, dtype: torch.dtype, spare: _Spare) -> _RowGroup:
        """Convert every float16 column now, in one call each, so that items are views from
        the first one on (sequential reading)."""
        for name in self.chunks:
            self.converted_rows(name, dtype, spare)
        self.prepared = True
        return self

    def catalog_rows(self, index: SplitIndex, shard: int, group: int) -> tuple:
        """The catalog's id, sentences and protocol sentences of every row, fetched once."""
        if self.catalog is None:
            if self.first_group is not None:
                group = self.first_group
            start = int(index.shard_start[shard] + index.group_start[shard][group])
            rows = index.row_catalog[start : start + len(self.ids)]
            taken = index.catalog.take(pa.array(np.maximum(rows, 0)))
            self.catalog = (
                rows.tolist(),
                taken.column("id").to_pylist(),
                taken.column("sentences").to_pylist(),
                taken.column("protocol_sentences").to_pylist(),
            )
        return self.catalog

    def float16(self, name: str, row: int) -> torch.Tensor | None:
        """The row's values as a flat float16 view (no copy), or None if no view could be made."""
        if name not in self._binary:
            chunks = self.chunks[name]
            self._binary[name] = (
                chunks[0]
                if len(chunks) == 1
                else _binary_views(_one_chunk(self.table.column(name)))
            )
        data, offsets = self._binary[name]
        if data is None:
            return None
        return data[int(offsets[row]) >> 1 : int(offsets[row + 1]) >> 1]

    def list_values(self, name: str, row: int) -> np.ndarray:
        values, offsets = self.lists[name]
        return values[offsets[row] : offsets[row + 1]]

    def converted_rows(
        self, name: str, dtype: torch.dtype, spare: _Spare | None = None
    ) -> tuple | None:
        """Every row of a float16 column converted in one go and split into [rows, dim] views,
        or None when the rows don't all have the shape their `num_frames` and `dim` say (then
        each row is read on its own, which reports the bad one)."""
        key = (name, dtype)
        if key not in self._whole:
            self._whole[key] = None
            chunks = self.chunks[name]
            dims = self.numbers["dim"]
            counts = np.full(len(self.ids), 49) if name == "grid" else self.numbers["num_frames"]
            sizes = np.concatenate([np.diff(offsets) for _, offsets in chunks] or [np.zeros(0)])
            if (
                all(data is not None for data, _ in chunks)
                and len(dims)
                and (dims == dims[0]).all()
                and dims[0] > 0
                and np.array_equal(sizes, 2 * counts.astype(np.int64) * dims)
            ):
                whole = _converted(
                    [
                        data[int(offsets[0]) >> 1 : int(offsets[-1]) >> 1]
                        for data, offsets in chunks
                    ],
                    dtype,
                    spare,
                )
                self._whole[key] = torch.split(whole.view(-1, int(dims[0])), counts.tolist())
        return self._whole[key]


def _reference_counts(objects: list) -> list[int]:
    return list(map(sys.getrefcount, objects))


class _Spare:
    """Conversion buffers that sequential reading hands out again once every item made from
    them is gone (a fresh tensor of a few MiB is new memory each time, and its page faults cost
    more than the conversion itself). At most `keep` buffers are kept; a buffer is reused only
    when nothing but this list refers to it, so no item ever shares memory with a later one."""

    def __init__(self, keep: int = 3):
        self.keep = keep
        self.buffers: list[pa.Buffer] = []
        # what a buffer that only a list holds counts, measured the way `tensor` counts (the
        # number differs between interpreters; a tensor over a buffer adds one)
        self.idle = _reference_counts([pa.allocate_buffer(1)])[0]

    def tensor(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        nbytes = numel * torch.empty(0, dtype=dtype).element_size()
        free = [b for b, n in zip(self.buffers, _reference_counts(self.buffers)) if n <= self.idle]
        fits = [b for b in free if b.size >= nbytes]
        if fits:
            buf = min(fits, key=lambda b: b.size)
        else:
            buf = pa.allocate_buffer(nbytes + nbytes // 8)  # room for the next run's few rows more
            if free:
                self.buffers.remove(min(free, key=lambda b: b.size))
            if len(self.buffers) < self.keep:
                self.buffers.append(buf)
        return torch.frombuffer(buf, dtype=dtype, count=numel)  # holds the buffer while alive


def _converted(
    pieces: list[torch.Tensor], dtype: torch.dtype, spare: _Spare | None
) -> torch.Tensor:
    """The flat tensors `pieces`, one after the other, as one new tensor of `dtype` (in a spare
    buffer when one is free), converted on this thread alone: torch's thread pool would fight
    pyarrow's read-ahead threads for the cores (OpenMP keeps the thread count per thread, so
    setting it here for the copy touches no other thread)."""
    total = sum(p.numel() for p in pieces)
    out = (
        spare.tensor(total, dtype)
        if spare is not None and total
        else torch.empty(total, dtype=dtype)
    )
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        at = 0
        for piece in pieces:
            out[at : at + piece.numel()].copy_(piece)
            at += piece.numel()
    finally:
        if threads > 1:
            torch.set_num_threads(threads)
    return out


def _one_chunk(column: pa.ChunkedArray) -> pa.Array:
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _binary_views(arr: pa.Array):
    """(float16 tensor over a binary array's data buffer, byte offsets per row); the tensor is
    None if no view can be made (odd offsets, nulls), and rows are then read one by one."""
    width = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    _, offsets_buf, buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=width)[arr.offset : arr.offset + len(arr) + 1]
    if sys.byteorder != "little" or arr.null_count or buf is None or (offsets & 1).any():
        return None, offsets
    with warnings.catch_warnings():  # a read-only view: items only ever get converted copies
        warnings.simplefilter("ignore")
        data = (
            torch.frombuffer(buf, dtype=torch.uint8, count=buf.size & ~1).view(torch.float16)
            if buf.size > 1
            else torch.zeros(0, dtype=torch.float16)
        )
    return data, offsets


class _OpenFiles:
    """Open Parquet files and the last row group read, for one process only.

    After a fork (DataLoader workers) the child sees another pid and opens its own files.
    """

    def __init__(self, max_open: int = 64):
        self.pid = os.getpid()
        self.max_open = max_open
        self.files: OrderedDict[str, pq.ParquetFile] = OrderedDict()
        self.last_key = None
        self.last_group: _RowGroup | None = None
        self.spare = _Spare()  # conversion buffers for sequential reading

    def _file(self, path: str) -> pq.ParquetFile:
        pf = self.files.pop(path, None) or pq.ParquetFile(path, memory_map=True)
        self.files[path] = pf
        while len(self.files) > self.max_open:
            self.files.popitem(last=False)[1].close()
        return pf

    def row_group(self, path: str, group: int, columns: list[str]) -> _RowGroup:
        key = (path, group, tuple(columns))
        if key == self.last_key:
            return self.last_group
        table = self._file(path).read_row_group(group, columns=columns, use_threads=False)
        self.last_key, self.last_group = key, _RowGroup(table)
        return self.last_group


#: sequential reading makes items from this many row groups (of about 1 MiB,
#: `mrw.shards.ROW_GROUP_BYTES`) at a time, converted in one call, while pyarrow reads as many
#: ahead: fewer calls per item, memory still bounded
SEQUENTIAL_GROUPS = 16


def sequential_runs(index: SplitIndex, positions: np.ndarray):
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


def _scan(jobs: list):
    """`(job, table)` for each job `(index, shard, first, last, positions)`, in order: row groups
    `first..last` of that shard, with the index's columns. pyarrow's dataset scanner reads them
    on its own threads, SEQUENTIAL_GROUPS row groups ahead, without the GIL, while the caller
    makes items from the last table (memory-mapped; read ahead is bounded)."""
    import pyarrow.dataset as pads
    from pyarrow import fs as pafs

    filesystem, fmt = pafs.LocalFileSystem(use_mmap=True), pads.ParquetFileFormat()

    def scanned(index, part):  # a generator, so that opening errors surface where reads do
        fragments = [
            fmt.make_fragment(
                index.shard_paths[s], filesystem=filesystem, row_groups=list(range(first, last + 1))
            )
            for _, s, first, last, _ in part
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

    for _, part in itertools.groupby(jobs, key=lambda job: id(job[0])):
        part = list(part)
        index = part[0][0]
        batches = scanned(index, part)
        for job in part:
            _, s, first, last, _ = job
            ends = np.append(
                index.group_start[s][1:], index.shard_start[s + 1] - index.shard_start[s]
            )
            want, got = int(ends[last] - index.group_start[s][first]), []
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


def _rows_of(index: SplitIndex, first: int, positions: np.ndarray) -> list[int]:
    """Where items `positions` (all in one shard, in row groups from `first` on) sit in the table
    that `_scan` reads for them."""
    starts = np.asarray(index.group_start[int(index.shard[positions[0]])])
    return (
        starts[index.row_group[positions]] - starts[first] + index.row_in_group[positions]
    ).tolist()


# -- the datasets ------------------------------------------------------------------------------
class _SplitBase:
    """What the map-style and the streaming datasets share: the index and how an item is made."""

    def __init__(
        self,
        parts: list[tuple[SplitIndex, np.ndarray]],
        *,
        name: str,
        spec: str,
        modality: str,
        backbone: str,
        num_frames: int | None,
        sampling: str,
        transform: Callable | None,
        dtype: torch.dtype = torch.float32,
    ):
        self.name = name
        self.split = spec
        self.modality = modality
        self.backbone = backbone
        self.num_frames = num_frames
        self.sampling = sampling
        self.transform = transform
        self.dtype = dtype
        self._parts = parts  # (split index, positions into its available items)
        self._offsets = np.cumsum([0] + [len(p) for _, p in parts])
        self._files: _OpenFiles | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"] = None  # never carry open files into another process
        return state

    def _open_files(self) -> _OpenFiles:
        if self._files is None or self._files.pid != os.getpid():
            self._files = _OpenFiles()
        return self._files

    @property
    def ids(self) -> list[str]:
        """The ids of the items, in the order `ds[i]` gives them."""
        out = []
        for index, pos in self._parts:
            out.extend(index.catalog.column("id").take(pa.array(index.rows[pos])).to_pylist())
        return out

    @property
    def info(self) -> dict:
        """Counts per split, the stage's settings, the dataset's descriptor and citation."""
        from mrw.descriptors import load_descriptor

        try:
            descriptor = load_descriptor(self.name)
        except (OSError, ValueError):
            descriptor = None
        splits = {}
        for index, pos in self._parts:
            entry = splits.setdefault(
                index.split, dict(index.counts, selected=0, stage_settings=index.manifest)
            )
            entry["selected"] += len(pos)
        citation = (descriptor or {}).get("citation") or {}
        return {
            "dataset": self.name,
            "split": self.split,
            "modality": self.modality,
            "backbone": self.backbone if self.modality == "features" else None,
            "num_items": int(self._offsets[-1]),
            "splits": splits,
            "descriptor": descriptor,
            "citation": citation.get("bibtex"),
        }

    def to_pandas(self):
        """The items' metadata, one row per item in order: every catalog column, `split`, and the
        stage's per-item numbers (`num_frames`, `fps`, ...); no media."""
        import pandas as pd

        frames = []
        for index, pos in self._parts:
            table = read_catalog(index.root, index.dataset, index.split).take(
                pa.array(index.rows[pos])
            )
            table = table.append_column("split", pa.array([index.split] * len(table), pa.string()))
            numbers = [c for c in _STAGE_COLUMNS[self.modality] if c in _PER_ITEM_NUMBERS]
            if len(pos):
                stage = pa.concat_tables(
                    pq.read_table(p, columns=numbers) for p in index.shard_paths
                )
                stage = stage.take(
                    pa.array(index.shard_start[index.shard[pos]] + index.shard_row[pos])
                )
                for c in numbers:
                    table = table.append_column(c, stage.column(c))
            frames.append(table.to_pandas())
        return pd.concat(frames, ignore_index=True)

    def _read_runs(self, jobs):
        """Sequential reading: for each job `(index, shard, first, last, positions)` in turn,
        row groups `first..last` of the shard (converted) and where each of `positions` sits
        in them. pyarrow's scanner reads the next row groups on its own threads meanwhile."""
        spare = self._open_files().spare
        for job, table in _scan(jobs):
            index, _, first, _, positions = job
            group = _RowGroup(table, first_group=first)
            if self.modality == "features" and len(positions) > 1:
                group.prepare(self.dtype, spare)
            yield job, group, _rows_of(index, first, positions)

    # -- making one item
    def _features(
        self,
        group: _RowGroup,
        column: str,
        row: int,
        shape,
        index,
        item_id,
        select: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A row's float16 matrix as `self.dtype` (only the `select` rows, if given).

        The first item of a row group converts its own rows; from the second on (sequential
        reading) the whole row group is converted at once and items are views into it, each
        view handed out once (a second read of the row converts it again), so that no two items
        share memory and an in-place transform never sees its own output.
        """
        whole = (
            group.converted_rows(column, self.dtype) if group.prepared or group.uses > 1 else None
        )
        if whole is not None and (column, row) not in group.handed_out:
            if select is not None:
                return whole[row].index_select(0, select)
            group.handed_out.add((column, row))
            return whole[row]
        half = _float16_matrix(group, column, row, shape, index, item_id)
        return _convert(half if select is None else half.index_select(0, select), self.dtype)

    def _sentence_choice(self, chosen: list[int]) -> int:
        """The protocol's first sentence; with `sampling="random"` a random protocol sentence."""
        if self.sampling == "random" and len(chosen) > 1:
            return chosen[random.randrange(len(chosen))]
        return chosen[0]

    def _make_item(self, index: SplitIndex, pos: int, group: _RowGroup, row: int) -> dict:
        cat_rows, cat_ids, cat_sentences, cat_protocol = group.catalog or group.catalog_rows(
            index, int(index.shard[pos]), int(index.row_group[pos])
        )
        item_id = cat_ids[row]
        if group.ids[row] != item_id or cat_rows[row] != index.rows[pos]:
            raise UsageError(
                f"{index.directory}: expected item {item_id!r} in a shard row but "
                f"found {group.ids[row]!r}; the shards changed after the split was opened"
            )
        sentences = list(cat_sentences[row])
        n = self._sentence_choice(cat_protocol[row] or [0])
        item = {
            "id": item_id,
            "sentences": sentences,
            "sentence": sentences[n],
            "sentence_id": f"{item_id}#{n}",
        }
        table = group.table
        if self.modality == "video":
            for c in table.column_names:
                if c != "id":
                    item[c] = table.column(c)[row].as_py()
            if self.transform is not None:
                item["video"] = self.transform(item["video"])
            return item
        total = group.counts["num_frames"][row]
        if index.dataset == "coco" or self.num_frames is None:
            idx = None  # every frame, in order
        else:
            idx = sample_frame_indices(
                total, self.num_frames, self.sampling, EDGE_FRAMES[index.dataset]
            )
        stamps = group.list_values("timestamps", row)
        if len(stamps) == total:
            stamps = stamps.copy() if idx is None else stamps[idx]
        else:
            stamps = np.zeros(0)
        if idx is not None:
            item["frame_indices"] = torch.tensor(idx, dtype=torch.long)
        item["timestamps"] = torch.from_numpy(stamps)
        if self.modality == "features":
            dim = group.counts["dim"][row]
            group.uses += 1
            if "grid" in group.chunks:  # images: the 7x7 map, plus the pooled vector
                item["features"] = self._features(group, "grid", row, (49, dim), index, item_id)
                item["pooled"] = self._features(
                    group, "features", row, (total, dim), index, item_id
                )[0]
            else:
                item["features"] = self._features(
                    group, "features", row, (total, dim), index, item_id, item.get("frame_indices")
                )
            key = "features"
        else:
            jpegs = table.column("frames")[row].values  # list<binary> scalar -> its binary array
            chosen = range(total) if idx is None else idx
            item["frames"] = torch.from_numpy(
                np.stack([_decode_jpeg(jpegs[i].as_py(), index, item_id) for i in chosen])
                if total
                else np.zeros(
                    (
                        0,
                        int(table.column("height")[row].as_py()),
                        int(table.column("width")[row].as_py()),
                        3,
                    ),
                    np.uint8,
                )
            )
            key = "frames"
        if self.transform is not None:
            item[key] = self.transform(item[key])
        return item


def _convert(half: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A new tensor of `dtype` from a float16 tensor, converted on this thread."""
    return _converted([half.reshape(-1)], dtype, None).view(half.shape)


def _float16_matrix(group: _RowGroup, column: str, row: int, shape, index, item_id) -> torch.Tensor:
    """A row's float16 little-endian bytes as a [rows, dim] tensor view (no copy)."""
    expected = shape[0] * shape[1] * 2
    view = group.float16(column, row)
    if view is not None and view.numel() * 2 == expected:
        return view.view(shape)
    buf = group.table.column(column)[row].as_py()
    if buf is None or len(buf) != expected:
        raise UsageError(
            f"{index.directory}: item {item_id!r} has {column} of "
            f"{0 if buf is None else len(buf)} bytes, expected {expected} for "
            f"float16 {list(shape)}; run `mrw validate`"
        )
    return torch.from_numpy(np.frombuffer(buf, dtype="<f2").astype(np.float16).reshape(shape))


def _decode_jpeg(data: bytes, index, item_id) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:
        raise UsageError(
            f"{index.directory}: a frame of item {item_id!r} does not decode "
            f"({type(e).__name__}); run `mrw validate`"
        ) from None


class SplitDataset(_SplitBase, Dataset):
    """Map-style: `len(ds)`, `ds[i]` (O(1): one row group read), `.ids`, `.info`, `to_pandas()`.

    Works in `DataLoader(num_workers=N)` with any start method: each process opens its own files.
    """

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, i: int) -> dict:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {n} items")
        p = bisect.bisect_right(self._offsets, i) - 1
        index, positions = self._parts[p]
        pos = int(positions[i - self._offsets[p]])
        group = self._open_files().row_group(
            index.shard_paths[index.shard[pos]], int(index.row_group[pos]), index.columns
        )
        return self._make_item(index, pos, group, int(index.row_in_group[pos]))

    def __iter__(self):
        """In order, like `ds[i]` for every i, but reading many row groups at a time."""
        jobs = [
            (index, s, first, last, run)
            for index, positions in self._parts
            for s, first, last, run in sequential_runs(index, positions)
        ]
        for job, group, rows in self._read_runs(jobs):
            for pos, row in zip(job[4].tolist(), rows):
                yield self._make_item(job[0], pos, group, row)

    def __repr__(self) -> str:
        return (
            f"SplitDataset({self.name!r}, split={self.split!r}, modality={self.modality!r}, "
            f"items={len(self)})"
        )


class StreamingSplitDataset(_SplitBase, IterableDataset):
    """Streaming: reads row groups in shard order and deals them, round robin, to every
    (distributed rank, DataLoader worker) pair, so each item comes once per epoch. With
    `shuffle_buffer > 0` the row groups are dealt in a permuted order and items pass through a
    shuffle buffer, both seeded by `seed + epoch`: call `set_epoch(e)` before each epoch (before
    the DataLoader starts its workers, so not with `persistent_workers=True`). Ranks and workers
    may get a few items more or fewer than each other (whole row groups are dealt)."""

    def __init__(
        self,
        parts,
        *,
        seed: int = 0,
        shuffle_buffer: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        **kwargs,
    ):
        super().__init__(parts, **kwargs)
        if shuffle_buffer < 0:
            raise UsageError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if (rank is None) != (world_size is None):
            raise UsageError("give both rank and world_size, or neither")
        if world_size is not None and not 0 <= rank < world_size:
            raise UsageError(f"rank {rank} is not within world_size {world_size}")
        self.seed = int(seed)
        self.shuffle_buffer = int(shuffle_buffer)
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        units = []  # (part, shard, row group, positions of the selected items in it, in file order)
        for p, (index, pos) in enumerate(parts):
            if not len(pos):
                continue
            key = (index.shard[pos].astype(np.int64) << 32) | index.row_group[pos].astype(np.int64)
            order = np.lexsort((index.row_in_group[pos], key))
            sorted_pos, sorted_key = pos[order], key[order]
            cuts = np.flatnonzero(np.diff(sorted_key)) + 1
            for chunk in np.split(sorted_pos, cuts):
                units.append((p, int(index.shard[chunk[0]]), int(index.row_group[chunk[0]]), chunk))
        # consecutive row groups of a shard travel together, SEQUENTIAL_GROUPS at most
        merged = []
        for p, s, g, chunk in units:
            last = merged[-1] if merged else None
            if (
                last
                and last[0] == p
                and last[1] == s
                and g == last[3] + 1
                and g < last[2] + SEQUENTIAL_GROUPS
            ):
                merged[-1] = (p, s, last[2], g, np.concatenate([last[4], chunk]))
            else:
                merged.append((p, s, g, g, chunk))
        self._units = merged

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _slot(self) -> tuple[int, int]:
        rank, world = self.rank, self.world_size
        if rank is None:
            rank, world = 0, 1
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * nw + wid, world * nw

    def __iter__(self):
        slot, slots = self._slot()
        units = list(range(len(self._units)))
        if self.shuffle_buffer:
            units = list(np.random.default_rng([self.seed, self.epoch]).permutation(len(units)))
        mine = units[slot::slots]
        rng = random.Random(f"{self.seed}/{self.epoch}/{slot}")
        buffer: list[dict] = []
        jobs = [
            (self._parts[p][0], s, first, last, chunk)
            for p, s, first, last, chunk in (self._units[u] for u in mine)
        ]
        for job, group, rows in self._read_runs(jobs):
            for pos, row in zip(job[4].tolist(), rows):
                item = self._make_item(job[0], pos, group, row)
                if not self.shuffle_buffer:
                    yield item
                    continue
                if len(buffer) < self.shuffle_buffer:
                    buffer.append(item)
                    continue
                j = rng.randrange(len(buffer))
                buffer[j], item = item, buffer[j]
                yield item
        rng.shuffle(buffer)
        yield from buffer

    def __repr__(self) -> str:
        return (
            f"StreamingSplitDataset({self.name!r}, split={self.split!r}, "
            f"modality={self.modality!r}, items={int(self._offsets[-1])})"
        )


# -- the entry point ---------------------------------------------------------------------------
def load_dataset(
    name: str,
    split: str | None = None,
    root=None,
    modality: str = "features",
    backbone: str = "resnet152",
    num_frames: int | None = None,
    sampling: str = "uniform",
    transform: Callable | None = None,
    streaming: bool = False,
    seed: int = 0,
    shuffle_buffer: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    dtype: torch.dtype = torch.float32,
):
    """Load a split of MRW, TGIF or COCO from the shards under `root` (no copy is made).

    Args:
        name: `mrw`, `tgif` or `coco`.
        split: `train`, `val` (or `valid`), `test`, a slice such as `train[:10%]`, `test[100:200]`,
            or a concatenation `train[:10%]+val`. Slices count the items the stage holds, in
            catalog order. `None`: a dict of every split that has a catalog under `root`.
        root: the data root (default `$MRW_HOME`, else `~/.cache/mrw`).
        modality: `features` (float32 `[T, D]`; COCO: the 7x7 grid `[49, D]` plus `pooled` `[D]`),
            `frames` (uint8 `[T, H, W, 3]`; COCO: T = 1) or `video` (`video` bytes, `format`,
            and the probe: `sha256`, `num_frames`, `fps`, `width`, `height`, `duration`).
        backbone: which feature shards (`features/<backbone>/`).
        num_frames: frames (or feature rows) per video item, like the reference's
            `max_video_length`; `None` keeps all. Short clips repeat their last frame.
        sampling: `uniform` (equal intervals; evaluation; TGIF leaves out 6 frames at each end
            of clips long enough, as the reference did) or `random` (a random run with a random
            skip of 1-3; training). `random` also picks `sentence` at random among the protocol's
            sentences (COCO's five captions); `uniform` takes the first one.
        transform: applied to the item's `features`, `frames` or `video` value; its result
            replaces that value.
        dtype: of `features` (`torch.float32`; `torch.float16` is what the shards store, half
            the memory and a little faster).
        streaming: an `IterableDataset` (see `StreamingSplitDataset`) instead of a map-style one;
            `seed`, `shuffle_buffer`, `rank` and `world_size` (default: torch.distributed's, if
            initialised) apply to it.

    Items are dicts: `id`, `sentences` (all, release order), `sentence` (the protocol's),
    `sentence_id` (`<id>#<n>`), the modality's value, `timestamps` (seconds) of the frames taken
    and, with `num_frames`, their `frame_indices`.
    """
    name = paths.check_dataset(name)
    if modality not in MODALITIES:
        raise UsageError(f"unknown modality {modality!r}: expected one of {', '.join(MODALITIES)}")
    if sampling not in SAMPLINGS:
        raise UsageError(f"unknown sampling {sampling!r}: expected uniform or random")
    if dtype not in (torch.float32, torch.float16, torch.float64, torch.bfloat16):
        raise UsageError(f"dtype must be a torch floating point type, got {dtype!r}")
    if num_frames is not None and (
        isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1
    ):
        raise UsageError(f"num_frames must be a positive integer or None, got {num_frames!r}")
    options = dict(
        root=root,
        modality=modality,
        backbone=backbone,
        num_frames=num_frames,
        sampling=sampling,
        transform=transform,
        streaming=streaming,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
        rank=rank,
        world_size=world_size,
        dtype=dtype,
    )
    if split is None:
        present = [s for s in paths.SPLITS if paths.catalog_path(root, name, s).exists()]
        if not present:
            read_catalog(root, name, "train")  # raises, naming the command to run
        return {s: load_dataset(name, s, **options) for s in present}

    slices = parse_split(split)
    indexes: dict[str, SplitIndex] = {}
    parts = []
    for sl in slices:
        if sl.split not in indexes:
            indexes[sl.split] = SplitIndex.open(root, name, sl.split, modality, backbone)
        index = indexes[sl.split]
        parts.append((index, np.arange(len(index), dtype=np.int64)[sl.bounds(len(index))]))
    common = dict(
        name=name,
        spec=str(split),
        modality=modality,
        backbone=backbone,
        num_frames=num_frames,
        sampling=sampling,
        transform=transform,
        dtype=dtype,
    )
    if streaming:
        return StreamingSplitDataset(
            parts,
            seed=seed,
            shuffle_buffer=shuffle_buffer,
            rank=rank,
            world_size=world_size,
            **common,
        )
    return SplitDataset(parts, **common)
