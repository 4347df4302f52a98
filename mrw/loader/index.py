"""A split's row-group index: for every item of the catalog that has a row in a stage's shards,
where that row sits (shard, row group, row), read from the `id` column and the footers alone."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mrw import paths
from mrw.catalog import read_catalog
from mrw.errors import UsageError
from mrw.loader.buffers import one_chunk
from mrw.shards import data_path, read_manifest, read_status, shard_index, status_shards

MODALITIES = ("features", "frames", "video")

#: columns each modality reads from its stage's shards (beyond `id`)
STAGE_COLUMNS = {
    "features": ["features", "num_frames", "dim", "timestamps"],
    "frames": ["frames", "timestamps", "num_frames", "width", "height"],
    "video": ["video", "format", "sha256", "num_frames", "fps", "width", "height", "duration"],
}
#: the stage's small per-item columns, shown beside the catalog's by `to_pandas()` and `ds[name]`
PER_ITEM_NUMBERS = ("num_frames", "dim", "format", "sha256", "fps", "width", "height", "duration")


def stage_command(dataset: str, split: str, modality: str, backbone: str = "resnet152") -> str:
    """The command that builds a split's stage for a modality."""
    if modality == "video":
        return f"mrw download --dataset {dataset} --split {split}"
    if modality == "frames":
        return f"mrw extract-frames --dataset {dataset} --split {split}"
    extra = "" if backbone == "resnet152" else f" --backbone {backbone}"
    return f"mrw extract-features --dataset {dataset} --split {split}{extra}"


def stage_dir(
    root: str | os.PathLike[str] | None,
    dataset: str,
    split: str,
    modality: str,
    backbone: str = "resnet152",
) -> Path:
    """The folder of a split's shards for a modality."""
    if modality == "video":
        return paths.videos_dir(root, dataset, split)
    if modality == "frames":
        return paths.frames_dir(root, dataset, split)
    return paths.features_dir(root, dataset, split, backbone)


def _source_dir(
    root: str | os.PathLike[str] | None,
    dataset: str,
    split: str,
    modality: str,
    manifest: dict | None,
) -> Path | None:
    """The stage a stage was built from (videos for frames; frames or videos for features)."""
    if modality == "video":
        return None
    if modality == "features" and (manifest or {}).get("source") == "frames":
        return paths.frames_dir(root, dataset, split)
    return paths.videos_dir(root, dataset, split)


def unreadable_shard(
    path: str | os.PathLike[str], error: BaseException, dataset: str, split: str, command: str
) -> str:
    """One line for a shard that is not (or no longer) a readable Parquet file."""
    reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
    return (
        f"{path}: not a readable Parquet shard ({reason}); run "
        f"`mrw validate --dataset {dataset} --split {split}`, or delete it and rerun `{command}`"
    )


def _open_shard(
    path: Path, needed: list[str], modality: str, dataset: str, split: str, command: str
) -> tuple[pq.ParquetFile, pa.ChunkedArray, np.ndarray]:
    """(ParquetFile, its id column, rows per row group) of one shard, or one clear error."""
    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        absent = [c for c in needed if c not in names]
        if absent:
            raise UsageError(
                f"{path}: not a {modality} shard (no column {', '.join(absent)}); "
                f"remove it and run `{command}`"
            )
        ids = pf.read(columns=["id"]).column("id")
        sizes = np.array(
            [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)], np.int64
        )
    except (pa.ArrowException, OSError) as e:
        raise UsageError(unreadable_shard(path, e, dataset, split, command)) from None
    return pf, ids, sizes


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
    command: str = ""

    def __len__(self) -> int:
        return len(self.rows)

    @cached_property
    def catalog_arrays(self) -> tuple[pa.Array, pa.Array, pa.Array]:
        """The catalog's id, sentences and protocol_sentences, one Arrow array each."""
        return tuple(
            one_chunk(self.catalog.column(c)) for c in ("id", "sentences", "protocol_sentences")
        )

    def group_rows(self, shard: int, group: int) -> int:
        """Rows in one row group of one shard."""
        starts = self.group_start[shard]
        end = (
            starts[group + 1]
            if group + 1 < len(starts)
            else self.shard_start[shard + 1] - self.shard_start[shard]
        )
        return int(end - starts[group])

    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str] | None,
        dataset: str,
        split: str,
        modality: str,
        backbone: str,
    ) -> SplitIndex:
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
        try:
            status = read_status(directory)
        except (pa.ArrowException, OSError) as e:
            raise UsageError(
                unreadable_shard(directory / "status", e, dataset, split, command)
            ) from None
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
                stacklevel=4,
            )
        needed = ["id"] + STAGE_COLUMNS[modality]
        columns = list(needed)
        shard_paths, shard_ids, group_sizes = [], [], []
        for status_file in statuses:  # a shard counts once its status file exists
            path = data_path(directory, shard_index(status_file))
            if not path.exists():
                continue  # every item of this shard failed
            pf, ids, sizes = _open_shard(path, needed, modality, dataset, split, command)
            if modality == "features" and "grid" in pf.schema_arrow.names and "grid" not in columns:
                columns.append("grid")  # images: the 7x7 map beside the pooled vector
            shard_paths.append(str(path))
            shard_ids.append(ids)
            group_sizes.append(sizes)
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
            command=command,
        )
