"""The common catalog: one row per item of a split, whatever the dataset's release format."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa

from mrw import paths
from mrw.errors import UsageError
from mrw.shards import read_parquet, write_table_atomic

CATALOG_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("sentences", pa.list_(pa.string())),
        ("url", pa.string()),
        ("protocol_sentences", pa.list_(pa.int32())),
    ]
)

#: source columns worth keeping, per dataset, after the common ones
EXTRA_COLUMNS: dict[str, list[tuple[str, pa.DataType]]] = {
    "mrw": [],
    "tgif": [],
    "coco": [("cocoid", pa.int64()), ("filepath", pa.string()), ("filename", pa.string())],
}


def catalog_schema(dataset: str) -> pa.Schema:
    schema = CATALOG_SCHEMA
    for name, type_ in EXTRA_COLUMNS[paths.check_dataset(dataset)]:
        schema = schema.append(pa.field(name, type_))
    return schema


def write_catalog(
    rows: Iterable[dict],
    root: str | os.PathLike[str] | None,
    dataset: str,
    split: str,
    metadata: dict | None = None,
) -> Path:
    """Write a split's catalog atomically; `rows` are dicts with the schema's columns."""
    schema = catalog_schema(dataset)
    table = pa.Table.from_pylist(list(rows), schema=schema)
    if metadata:
        table = table.replace_schema_metadata({k: str(v) for k, v in metadata.items()})
    path = paths.catalog_path(root, dataset, split)
    write_table_atomic(table, path)
    return path


def read_catalog(
    root: str | os.PathLike[str] | None,
    dataset: str,
    split: str,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """The split's catalog; a missing one is bad usage and names the command that builds it."""
    path = paths.catalog_path(root, dataset, split)
    if not path.exists():
        raise UsageError(
            f"no catalog for {dataset}/{paths.normalize_split(split)} under {paths.resolve_root(root)}: "
            f"run `mrw download --dataset {dataset} --split {paths.normalize_split(split)} --catalog-only` first"
        )
    return read_parquet(
        path,
        f"delete it and rerun `mrw download --dataset {dataset} --split "
        f"{paths.normalize_split(split)} --catalog-only`",
        columns=columns,
    )


def sentence_ids(table: pa.Table, all_sentences: bool = False) -> list[str]:
    """`<id>#<n>` for the protocol's sentences (or all of them), in catalog order."""
    ids = table.column("id").to_pylist()
    if all_sentences:
        counts = [len(s) for s in table.column("sentences").to_pylist()]
        return [f"{i}#{n}" for i, c in zip(ids, counts) for n in range(c)]
    chosen = table.column("protocol_sentences").to_pylist()
    return [f"{i}#{n}" for i, ns in zip(ids, chosen) for n in ns]
