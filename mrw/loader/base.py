"""What the map-style and the streaming datasets share: the selected items (views over the
split indexes, never a copy of the data), how an item is made, and the per-item metadata."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mrw.catalog import read_catalog
from mrw.errors import UsageError
from mrw.frames import DecodeError, decode_jpeg
from mrw.loader.buffers import convert
from mrw.loader.index import PER_ITEM_NUMBERS, STAGE_COLUMNS, SplitIndex
from mrw.loader.rowgroups import OpenFiles, RowGroup, rows_of, scan
from mrw.sampling import EDGE_FRAMES, sample_frame_indices

if TYPE_CHECKING:
    import pandas
    from typing_extensions import Self

#: what `features` says of each column an item may have
_DESCRIPTIONS = {
    "id": "string",
    "sentences": "list<string>",
    "sentence": "string",
    "sentence_id": "string (<id>#<n>)",
    "timestamps": "float64 tensor [T] (seconds)",
    "frame_indices": "int64 tensor [T]",
    "video": "binary",
    "format": "string",
    "sha256": "string",
    "num_frames": "int32",
    "fps": "float64",
    "width": "int32",
    "height": "int32",
    "duration": "float64",
    "frames": "uint8 tensor [T, H, W, 3]",
    "pooled": "{dtype} tensor [D]",
}


class SplitBase:
    """The items of one or more split indexes: item `k` is `indexes[which[k]]`'s available item
    `positions[k]`. Views (`select`, `shuffle`, ...) share the indexes and the open files."""

    def __init__(
        self,
        indexes: list[SplitIndex],
        which: np.ndarray,
        positions: np.ndarray,
        *,
        name: str,
        spec: str,
        modality: str,
        backbone: str,
        num_frames: int | None,
        sampling: str,
        transform: Callable | None,
        dtype: torch.dtype = torch.float32,
        arrow_cache: bool = False,
        maps: tuple = (),
        batch_transform: Callable | None = None,
    ):
        self.name = name
        self.split = spec
        self.modality = modality
        self.backbone = backbone
        self.num_frames = num_frames
        self.sampling = sampling
        self.transform = transform
        self.dtype = dtype
        self.arrow_cache = arrow_cache
        self._indexes = indexes
        self._which = np.asarray(which, np.int32)
        self._pos = np.asarray(positions, np.int64)
        # (function, remove_columns, each item's index in the dataset `map` was called on, or
        # None without `with_indices`), applied in order
        self._maps = tuple(maps)
        self._batch_transform = batch_transform
        self._files: OpenFiles | None = None

    # -- views -----------------------------------------------------------------------------
    def _options(self) -> dict:
        return dict(
            name=self.name,
            spec=self.split,
            modality=self.modality,
            backbone=self.backbone,
            num_frames=self.num_frames,
            sampling=self.sampling,
            transform=self.transform,
            dtype=self.dtype,
            arrow_cache=self.arrow_cache,
            maps=self._maps,
            batch_transform=self._batch_transform,
        )

    def _view(
        self,
        which: np.ndarray | None = None,
        positions: np.ndarray | None = None,
        **changes: Any,
    ) -> Self:
        """A dataset of the same kind over other items of the same indexes (no data copied)."""
        view = type(self).__new__(type(self))
        view.__dict__.update(self.__dict__)
        SplitBase.__init__(
            view,
            self._indexes,
            self._which if which is None else which,
            self._pos if positions is None else positions,
            **{**self._options(), **changes},
        )
        view._files = self._files
        return view

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_files"] = None  # never carry open files into another process
        return state

    def _open_files(self) -> OpenFiles:
        if self._files is None or self._files.pid != os.getpid():
            self._files = OpenFiles()
        return self._files

    # -- what the items are ------------------------------------------------------------------
    @property
    def ids(self) -> list[str]:
        """The ids of the items, in the order `ds[i]` gives them."""
        return self._catalog_column("id")

    def _parts(self) -> Iterator[tuple[SplitIndex, np.ndarray, np.ndarray]]:
        """(index, positions into its items, where they sit in this dataset) per index."""
        for k, index in enumerate(self._indexes):
            where = np.flatnonzero(self._which == k)
            if len(where):
                yield index, self._pos[where], where

    def _catalog_column(self, column: str) -> list:
        out: list = [None] * len(self._pos)
        for index, pos, where in self._parts():
            values = index.catalog.column(column).take(pa.array(index.rows[pos])).to_pylist()
            for k, v in zip(where.tolist(), values):
                out[k] = v
        return out

    def _base_columns(self) -> list[str]:
        """The keys of an item, before `map`."""
        names = ["id", "sentences", "sentence", "sentence_id"]
        coco = self.name == "coco"
        if self.modality == "video":
            return names + STAGE_COLUMNS["video"]
        if self.num_frames is not None and not coco:
            names.append("frame_indices")
        names.append("timestamps")
        names.append(self.modality)
        if self.modality == "features" and coco:
            names.append("pooled")
        return names

    @property
    def features(self) -> dict[str, str]:
        """A description of each column of an item (its type and, for tensors, shape), before
        `map` and `with_transform`."""
        out = {}
        for c in self._base_columns():
            if c == "features":
                shape = "[49, D] (the 7x7 grid)" if self.name == "coco" else "[T, D]"
                out[c] = f"{str(self.dtype).replace('torch.', '')} tensor {shape}"
            else:
                out[c] = _DESCRIPTIONS[c].format(dtype=str(self.dtype).replace("torch.", ""))
        return out

    def _metadata(self, columns: list[str]) -> pa.Table:
        """Catalog columns, `split`, and the stage's per-item numbers of the items, in order;
        no media is read."""
        tables = []
        order = []
        for index, pos, where in self._parts():
            catalog_cols = [c for c in columns if c not in PER_ITEM_NUMBERS and c != "split"]
            table = read_catalog(
                index.root, index.dataset, index.split, columns=catalog_cols or ["id"]
            ).take(pa.array(index.rows[pos]))
            table = table.select(catalog_cols)
            if "split" in columns:
                table = table.append_column(
                    "split", pa.array([index.split] * len(table), pa.string())
                )
            numbers = [
                c for c in STAGE_COLUMNS[self.modality] if c in PER_ITEM_NUMBERS and c in columns
            ]
            if numbers:
                stage = pa.concat_tables(
                    pq.read_table(p, columns=numbers) for p in index.shard_paths
                ).take(pa.array(index.shard_start[index.shard[pos]] + index.shard_row[pos]))
                for c in numbers:
                    table = table.append_column(c, stage.column(c))
            tables.append(table)
            order.append(where)
        if not tables:
            return pa.table({c: pa.array([], pa.null()) for c in columns})
        whole = pa.concat_tables(tables, promote_options="default")
        return whole.take(pa.array(np.argsort(np.concatenate(order), kind="stable")))

    def to_pandas(self) -> pandas.DataFrame:
        """The items' metadata, one row per item in order: every catalog column, `split`, and the
        stage's per-item numbers (`num_frames`, `fps`, ...); no media."""
        index = self._indexes[0]
        catalog = read_catalog(index.root, index.dataset, index.split)
        numbers = [c for c in STAGE_COLUMNS[self.modality] if c in PER_ITEM_NUMBERS]
        return self._metadata([*catalog.column_names, "split", *numbers]).to_pandas()

    @property
    def info(self) -> dict:
        """Counts per split, the stage's settings, the dataset's descriptor and citation."""
        from mrw.descriptors import load_descriptor

        try:
            descriptor = load_descriptor(self.name)
        except (OSError, ValueError):
            descriptor = None
        splits: dict[str, dict] = {}
        for index in self._indexes:
            splits.setdefault(
                index.split, dict(index.counts, selected=0, stage_settings=index.manifest)
            )
        for index, pos, _ in self._parts():
            splits[index.split]["selected"] += len(pos)
        citation = (descriptor or {}).get("citation") or {}
        return {
            "dataset": self.name,
            "split": self.split,
            "modality": self.modality,
            "backbone": self.backbone if self.modality == "features" else None,
            "num_items": len(self._pos),
            "splits": splits,
            "descriptor": descriptor,
            "citation": citation.get("bibtex"),
        }

    # -- reading ---------------------------------------------------------------------------
    def _item_at(self, k: int) -> dict:
        """Item `k` of this dataset, read on its own (one row group)."""
        index = self._indexes[int(self._which[k])]
        pos = int(self._pos[k])
        group = self._open_files().row_group(
            index, int(index.shard[pos]), int(index.row_group[pos]), self.arrow_cache
        )
        return self._finish(self._make_item(index, pos, group, int(index.row_in_group[pos])), k)

    def _read_runs(self, jobs: list[tuple]) -> Iterator[tuple[tuple, RowGroup, list[int]]]:
        """Sequential reading: for each job `(index, shard, first, last, positions)` in turn,
        row groups `first..last` of the shard (converted) and where each of `positions` sits
        in them. pyarrow's scanner reads the next row groups on its own threads meanwhile."""
        spare = self._open_files().spare
        for job, table in scan(jobs):
            index, _, first, _, positions, *_ = job
            group = RowGroup(table, first_group=first)
            if self.modality == "features":
                group.prepare(self.dtype, spare)
            yield job, group, rows_of(index, first, positions)

    def _finish(self, item: dict, k: int) -> dict:
        """`map`'s functions, in order, on a made item."""
        for function, remove, indices in self._maps:
            result = function(item) if indices is None else function(item, int(indices[k]))
            if result is not None:
                if not isinstance(result, dict):
                    raise UsageError(
                        f"a map function must return a dict or None, got {type(result).__name__}"
                    )
                item = {**item, **result}
            for c in remove:
                item.pop(c, None)
        return item

    # -- making one item ---------------------------------------------------------------------
    def _features(
        self,
        group: RowGroup,
        column: str,
        row: int,
        shape: tuple[int, int],
        index: SplitIndex,
        item_id: str,
        select: torch.Tensor | None,
    ) -> torch.Tensor:
        """A row's float16 matrix as `self.dtype` (only the `select` rows, if given). Sequential
        reading hands out views into the row group's converted rows, each row once, so that no
        two items share memory and an in-place transform never sees its own output."""
        whole = group.whole(column)
        if whole is not None and (column, row) not in group.handed:
            group.handed.add((column, row))
            return whole[row] if select is None else whole[row].index_select(0, select)
        expected = shape[0] * shape[1] * 2
        half = group.half(column, row)
        if half is None or half.numel() * 2 != expected:
            raise UsageError(
                f"{index.directory}: item {item_id!r} has {column} of "
                f"{group.nbytes(column, row)} bytes, expected {expected} for float16 "
                f"{list(shape)}; run `mrw validate`"
            )
        half = half.view(shape)
        return convert(half if select is None else half.index_select(0, select), self.dtype)

    def _sentence_choice(self, chosen: list[int]) -> int:
        """The protocol's first sentence; with `sampling="random"` a random protocol sentence."""
        if self.sampling == "random" and len(chosen) > 1:
            return chosen[random.randrange(len(chosen))]
        return chosen[0]

    def _catalog_of(
        self, index: SplitIndex, pos: int, group: RowGroup, row: int
    ) -> tuple[str, str | None, list[str], list[int]]:
        """(id in the catalog, id in the shard row, sentences, protocol sentences) of an item."""
        cat_row = int(index.rows[pos])
        if not group.indexed:
            ids, sentences, protocol = index.catalog_arrays
            return (
                ids[cat_row].as_py(),
                group.scalar("id", row),
                sentences[cat_row].as_py(),
                protocol[cat_row].as_py(),
            )
        if group.catalog is None:  # every row of the table at once
            shard = int(index.shard[pos])
            start = int(index.shard_start[shard] + index.group_start[shard][group.first_group])
            cat_rows = index.row_catalog[start : start + group.table.num_rows]
            taken = index.catalog.take(pa.array(np.maximum(cat_rows, 0)))
            group.catalog = (
                cat_rows.tolist(),
                taken.column("id").to_pylist(),
                taken.column("sentences").to_pylist(),
                taken.column("protocol_sentences").to_pylist(),
            )
        rows, ids, sentences, protocol = group.catalog
        stored = group.ids[row] if rows[row] == cat_row else None
        return ids[row], stored, list(sentences[row]), protocol[row]

    def _make_item(self, index: SplitIndex, pos: int, group: RowGroup, row: int) -> dict:
        item_id, stored_id, sentences, protocol = self._catalog_of(index, pos, group, row)
        if stored_id != item_id:
            raise UsageError(
                f"{index.directory}: expected item {item_id!r} in a shard row but "
                f"found {stored_id!r}; the shards changed after the split was opened"
            )
        n = self._sentence_choice(protocol or [0])
        item: dict[str, Any] = {
            "id": item_id,
            "sentences": sentences,
            "sentence": sentences[n],
            "sentence_id": f"{item_id}#{n}",
        }
        if self.modality == "video":
            for c in STAGE_COLUMNS["video"]:
                item[c] = group.scalar(c, row)
            if self.transform is not None:
                item["video"] = self.transform(item["video"])
            return item
        total = (
            group.counts["num_frames"][row] if group.indexed else group.scalar("num_frames", row)
        )
        if index.dataset == "coco" or self.num_frames is None:
            idx = None  # every frame, in order
        else:
            idx = sample_frame_indices(
                total, self.num_frames, self.sampling, EDGE_FRAMES[index.dataset]
            )
        stamps = group.timestamps(row)
        if len(stamps) == total:
            stamps = stamps.copy() if idx is None else stamps[idx]
        else:
            stamps = np.zeros(0)
        select = None
        if idx is not None:
            select = torch.tensor(idx, dtype=torch.long)
            item["frame_indices"] = select
        item["timestamps"] = torch.from_numpy(stamps)
        if self.modality == "features":
            dim = group.counts["dim"][row] if group.indexed else group.scalar("dim", row)
            if "grid" in group.table.column_names:  # images: the 7x7 map, plus the pooled vector
                item["features"] = self._features(
                    group, "grid", row, (49, dim), index, item_id, None
                )
                item["pooled"] = self._features(
                    group, "features", row, (total, dim), index, item_id, None
                )[0]
            else:
                item["features"] = self._features(
                    group, "features", row, (total, dim), index, item_id, select
                )
        else:
            item["frames"] = self._frames(group, row, total, idx, index, item_id)
        if self.transform is not None:
            item[self.modality] = self.transform(item[self.modality])
        return item

    def _frames(
        self,
        group: RowGroup,
        row: int,
        total: int,
        idx: list[int] | None,
        index: SplitIndex,
        item_id: str,
    ) -> torch.Tensor:
        if not total:
            height, width = group.scalar("height", row), group.scalar("width", row)
            return torch.zeros((0, int(height), int(width), 3), dtype=torch.uint8)
        jpegs = group.table.column("frames")[row].values  # list<binary> scalar -> binary array
        chosen = range(total) if idx is None else idx
        return torch.from_numpy(
            np.stack([_decode_jpeg(jpegs[i].as_py(), index, item_id) for i in chosen])
        )


def _decode_jpeg(data: bytes, index: SplitIndex, item_id: str) -> np.ndarray:
    try:
        return decode_jpeg(data)
    except DecodeError as e:
        raise UsageError(
            f"{index.directory}: a frame of item {item_id!r} does not decode "
            f"({type(e).__name__}); run `mrw validate`"
        ) from None
