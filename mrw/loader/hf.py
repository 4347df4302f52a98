"""A Hugging Face `datasets.Dataset` of a split's items, for the whole HF API (the `hf` extra).

The stage's shards are read by `datasets.Dataset.from_parquet` (which keeps its own Arrow
copy in its cache, as every HF dataset does), the rows put in the order of the mrw dataset,
and the catalog's `sentences` and the `split` added; media stay as stored (`features` float16
bytes, `frames` JPEG bytes, `video` bytes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mrw.errors import UsageError

if TYPE_CHECKING:
    import datasets

    from mrw.loader.dataset import SplitDataset


def as_hf_dataset(ds: SplitDataset, cache_dir: str | None = None) -> datasets.Dataset:
    """The items of a `SplitDataset`, in its order, as a `datasets.Dataset`."""
    try:
        import datasets
    except ImportError:
        raise UsageError("to_hf() needs Hugging Face datasets: pip install 'mrw[hf]'") from None
    if len(ds) == 0:
        raise UsageError("to_hf() of an empty dataset: there is nothing to read")
    parts, where = [], []
    for index, pos, at in ds._parts():
        whole = datasets.Dataset.from_parquet(
            list(index.shard_paths), cache_dir=cache_dir, columns=index.columns
        )
        rows = index.shard_start[index.shard[pos]] + index.shard_row[pos]
        part = whole.select(rows.tolist())
        sentences = index.catalog.column("sentences").take(index.rows[pos]).to_pylist()
        part = part.add_column("sentences", sentences)
        part = part.add_column("split", [index.split] * len(part))
        parts.append(part)
        where.append(at)
    joined = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    order = np.argsort(np.concatenate(where), kind="stable")
    if not np.array_equal(order, np.arange(len(order))):
        joined = joined.select(order.tolist())
    return joined
