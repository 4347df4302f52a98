"""The right answers: a split's items and protocol sentences, from its catalog."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from mrw import paths
from mrw.errors import UsageError

COCO_FOLD_SIZE = 1000
CATALOG_COLUMNS = ("id", "sentences", "protocol_sentences")


@dataclass
class GroundTruth:
    """The split's items and protocol sentences, in catalog order; `owner[j]` = item of sentence j."""

    dataset: str
    split: str
    item_ids: list[str]
    sentence_ids: list[str]
    owner: np.ndarray
    all_sentences: bool = False
    item_index: dict = field(init=False, repr=False)
    sentence_index: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.item_index = {i: n for n, i in enumerate(self.item_ids)}
        self.sentence_index = {s: n for n, s in enumerate(self.sentence_ids)}

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_ids)

    def sentence_range(self, items: slice) -> slice:
        """The sentences of consecutive items (catalog order keeps them together)."""
        lo, hi = np.searchsorted(self.owner, [items.start, items.stop])
        return slice(int(lo), int(hi))

    def subset(self, keep: np.ndarray) -> GroundTruth:
        """Only the items where `keep` (bool, catalog order) holds, with their sentences."""
        new_index = np.cumsum(keep) - 1
        kept_sentences = keep[self.owner]
        return GroundTruth(
            self.dataset,
            self.split,
            [i for i, k in zip(self.item_ids, keep) if k],
            [s for s, k in zip(self.sentence_ids, kept_sentences) if k],
            new_index[self.owner[kept_sentences]].astype(np.int64),
            self.all_sentences,
        )

    def protocols(self) -> dict[str, list[slice]]:
        """Protocol name -> folds of consecutive items."""
        everything = [slice(0, self.num_items)]
        if self.dataset != "coco":
            return {"full": everything}
        folds = [
            slice(f * COCO_FOLD_SIZE, (f + 1) * COCO_FOLD_SIZE)
            for f in range(self.num_items // COCO_FOLD_SIZE)
        ]
        return {"5k": everything, **({"1k": folds} if folds else {})}


def _read_catalog_table(root: str | os.PathLike[str] | None, dataset: str, split: str) -> pa.Table:
    """The catalog's columns the evaluation needs; a file that does not read is bad input."""
    from mrw.catalog import CATALOG_SCHEMA, read_catalog

    path = paths.catalog_path(root, dataset, split)
    rebuild = (
        f"delete it and run `mrw download --dataset {dataset} --split {split} --catalog-only` "
        f"(`mrw validate --dataset {dataset} --split {split}` checks the split)"
    )
    try:
        table = read_catalog(root, dataset, split, columns=list(CATALOG_COLUMNS))
    except (pa.ArrowException, OSError) as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise UsageError(
            f"{path}: the catalog does not read as Parquet ({reason}): {rebuild}"
        ) from None
    for name in CATALOG_COLUMNS:
        want = CATALOG_SCHEMA.field(name).type
        got = table.schema.field(name).type
        if got != want or (name == "id" and table.column(name).null_count):
            raise UsageError(
                f"{path}: the catalog's column {name!r} is {got}"
                + (" with nulls" if got == want else f", expected {want}")
                + f": {rebuild}"
            )
    return table


def load_ground_truth(
    root: str | os.PathLike[str] | None, dataset: str, split: str, all_sentences: bool = False
) -> GroundTruth:
    from mrw.catalog import sentence_ids

    split = paths.normalize_split(split)
    table = _read_catalog_table(root, dataset, split)
    try:
        sids = sentence_ids(table, all_sentences=all_sentences)
    except TypeError:  # a null list of sentences
        raise UsageError(
            f"{paths.catalog_path(root, dataset, split)}: the catalog has an item without its "
            f"sentence lists: rebuild it with `mrw download --dataset {dataset} --split {split} "
            "--catalog-only`"
        ) from None
    item_ids = table.column("id").to_pylist()
    index = {i: n for n, i in enumerate(item_ids)}
    owner = np.fromiter((index[s.rsplit("#", 1)[0]] for s in sids), dtype=np.int64, count=len(sids))
    if np.any(np.diff(owner) < 0) or len(index) != len(item_ids):
        raise UsageError(
            f"the catalog of {dataset}/{split} has duplicated ids or sentences out of "
            "item order: rebuild it with `mrw download --catalog-only`"
        )
    empty = np.flatnonzero(np.bincount(owner, minlength=len(item_ids)) == 0)
    if len(empty):
        raise UsageError(
            f"the catalog of {dataset}/{split}: item {item_ids[empty[0]]!r} has no "
            f"sentence to evaluate ({len(empty)} such items)"
        )
    return GroundTruth(dataset, split, item_ids, sids, owner, all_sentences)
