"""The map-style dataset, with the methods a Hugging Face `datasets` user reaches for. Every
method that gives a dataset gives a view over the same shards (no data is copied)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from torch.utils.data import Dataset

from mrw.errors import UsageError
from mrw.loader.base import SplitBase
from mrw.loader.index import PER_ITEM_NUMBERS
from mrw.loader.rowgroups import sequential_runs

if TYPE_CHECKING:
    import datasets

#: columns `ds[name]` and `filter(input_columns=...)` read without reading any media
_METADATA = ("id", "sentences", "protocol_sentences", "url", "split", *PER_ITEM_NUMBERS)


class SplitDataset(SplitBase, Dataset):
    """Map-style: `len(ds)`, `ds[i]` (one row group read), `ds[i:j]` and `ds[[i, j]]` (a dict of
    lists), `ds["id"]` (a column), `select`, `filter`, `shuffle`, `train_test_split`, `map`,
    `with_transform`, `to_pandas`, `to_hf`, `.ids`, `.info`.

    Works in `DataLoader(num_workers=N)` with any start method: each process opens its own files.
    """

    def __len__(self) -> int:
        return len(self._pos)

    @property
    def num_rows(self) -> int:
        return len(self._pos)

    @property
    def column_names(self) -> list[str]:
        """The keys of an item (after `map`: those of the first item)."""
        if self._maps and len(self):
            return list(self._item_at(0))
        return self._base_columns()

    # -- indexing ------------------------------------------------------------------------------
    def __getitem__(self, key: int | str | slice | Iterable[int]) -> Any:
        if isinstance(key, str):
            return self._column(key)
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            k = self._check_index(int(key))
            item = self._item_at(k)
            if self._batch_transform is None:
                return item
            return {c: v[0] for c, v in self._transform_batch(_as_batch([item])).items()}
        if isinstance(key, slice):
            ks = np.arange(len(self))[key]
        else:
            ks = self._indices(key)
        items = list(self._iter_items(ks))
        if not items:
            return self._transform_batch({c: [] for c in self.column_names})
        return self._transform_batch(_as_batch(items))

    def _check_index(self, i: int) -> int:
        n = len(self)
        k = i + n if i < 0 else i
        if not 0 <= k < n:
            raise IndexError(f"index {i} out of range for {n} items")
        return k

    def _indices(self, indices: object) -> np.ndarray:
        """Indices as an int64 array, negative ones counted from the end, each checked."""
        if isinstance(indices, np.ndarray):
            arr = indices
        elif hasattr(indices, "tolist") and not isinstance(indices, (list, tuple)):
            arr = np.asarray(indices.tolist())  # a tensor
        else:
            arr = np.asarray(list(cast(Iterable[int], indices)))  # else list() raises TypeError
        if arr.size == 0:
            return np.zeros(0, np.int64)
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer) or arr.ndim != 1:
            raise TypeError("indices must be a 1-D sequence of integers")
        arr = arr.astype(np.int64)
        n = len(self)
        bad = (arr < -n) | (arr >= n)
        if bad.any():
            raise IndexError(f"index {int(arr[bad][0])} out of range for {n} items")
        return np.where(arr < 0, arr + n, arr)

    def _column(self, name: str) -> list:
        if self._batch_transform is not None:
            return self[0 : len(self)][name]
        if not self._maps:
            if name in ("id", "sentences", "protocol_sentences"):
                return self._catalog_column(name)
            if name in _METADATA:
                table = self._metadata([name])
                if name in table.column_names:
                    return table.column(name).to_pylist()
            if name not in self._base_columns():
                raise KeyError(
                    f"no column {name!r}: the columns are {', '.join(self.column_names)}"
                )
        values = []
        for item in self._iter_items():
            if name not in item:
                raise KeyError(f"no column {name!r}: the columns are {', '.join(item)}")
            values.append(item[name])
        return values

    # -- iteration -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        """In order, like `ds[i]` for every i, but reading many row groups at a time."""
        if self._batch_transform is None:
            yield from self._iter_items()
            return
        for item in self._iter_items():
            yield {c: v[0] for c, v in self._transform_batch(_as_batch([item])).items()}

    def _iter_items(self, ks: np.ndarray | None = None) -> Iterator[dict]:
        """Items `ks` (default: all) in that order, after `map`: stretches that lie close
        together in a shard are read ahead by pyarrow's scanner, lone items one by one."""
        ks = np.arange(len(self)) if ks is None else np.asarray(ks, np.int64)
        which, pos = self._which[ks], self._pos[ks]
        cuts = np.flatnonzero(np.diff(which)) + 1
        jobs = []
        for seg_ks, seg_which, seg_pos in zip(
            np.split(ks, cuts), np.split(which, cuts), np.split(pos, cuts)
        ):
            if not len(seg_ks):
                continue
            index = self._indexes[int(seg_which[0])]
            at = 0
            for s, first, last, run in sequential_runs(index, seg_pos):
                jobs.append((index, s, first, last, run, seg_ks[at : at + len(run)]))
                at += len(run)
        batch: list = []
        for job in [*jobs, None]:
            if job is not None and len(job[4]) > 1:
                batch.append(job)
                continue
            if batch:
                for done, group, rows in self._read_runs(batch):
                    for p, row, k in zip(done[4].tolist(), rows, done[5].tolist()):
                        yield self._finish(self._make_item(done[0], p, group, row), k)
                batch = []
            if job is not None:
                yield self._item_at(int(job[5][0]))

    def _transform_batch(self, batch: dict) -> dict:
        if self._batch_transform is None:
            return batch
        out = self._batch_transform(batch)
        if not isinstance(out, dict):
            raise UsageError(
                f"a with_transform function must return a dict, got {type(out).__name__}"
            )
        return out

    # -- views -----------------------------------------------------------------------------
    def select(self, indices: Iterable[int]) -> SplitDataset:
        """The items at `indices`, in that order (negative ones count from the end), as HF's."""
        ks = self._indices(indices)
        maps = tuple((f, rm, None if at is None else at[ks]) for f, rm, at in self._maps)
        return self._view(self._which[ks], self._pos[ks], maps=maps)

    def shuffle(
        self, seed: int | None = None, generator: np.random.Generator | None = None
    ) -> SplitDataset:
        """The items in a random order: HF's, `np.random.default_rng(seed).permutation(n)`."""
        rng = generator if generator is not None else np.random.default_rng(seed)
        return self.select(rng.permutation(len(self)))

    def filter(
        self,
        function: Callable[..., bool],
        with_indices: bool = False,
        input_columns: str | list[str] | None = None,
    ) -> SplitDataset:
        """The items for which `function(item)` is true (`function(item, i)` with
        `with_indices`; `function(*values)` of `input_columns`). Metadata columns (`id`,
        `sentences`, `num_frames`, ...) are read without reading any media."""
        columns = [input_columns] if isinstance(input_columns, str) else input_columns
        if columns is not None and not self._maps and all(c in _METADATA for c in columns):
            table = self._metadata(list(columns))
            rows = zip(*(table.column(c).to_pylist() for c in columns))
            values: Iterable = (list(r) for r in rows)
        elif columns is not None:
            values = ([item[c] for c in columns] for item in self._iter_items())
        else:
            values = ([item] for item in self._iter_items())
        keep = []
        for k, args in enumerate(values):
            if function(*args, k) if with_indices else function(*args):
                keep.append(k)
        return self.select(keep)

    def train_test_split(
        self,
        test_size: float | int | None = None,
        train_size: float | int | None = None,
        shuffle: bool = True,
        seed: int | None = None,
    ) -> dict[str, SplitDataset]:
        """`{"train", "test"}` views, sized and drawn as HF's `train_test_split` draws them
        (`test_size` 0.25 by default; a float is a fraction, rounded up for the test part)."""
        n = len(self)
        if n == 0:
            return {"train": self, "test": self}
        if test_size is None and train_size is None:
            test_size = 0.25
        for label, size in (("test_size", test_size), ("train_size", train_size)):
            if size is None:
                continue
            if isinstance(size, bool) or not isinstance(size, (int, float)):
                raise UsageError(f"{label} must be an int or a float, got {size!r}")
            if isinstance(size, int) and not 0 < size < n:
                raise UsageError(f"{label}={size} must lie within 1 and {n - 1} ({n} items)")
            if isinstance(size, float) and not 0 < size < 1:
                raise UsageError(f"{label}={size} must lie within (0, 1)")
        if (
            isinstance(test_size, float)
            and isinstance(train_size, float)
            and test_size + train_size > 1
        ):
            raise UsageError(f"test_size + train_size = {test_size + train_size} exceeds 1")
        n_test = math.ceil(test_size * n) if isinstance(test_size, float) else test_size
        n_train = math.floor(train_size * n) if isinstance(train_size, float) else train_size
        if n_test is None:
            assert n_train is not None  # test_size defaults when neither size is given
            n_test = n - n_train
        elif n_train is None:
            n_train = n - n_test
        if n_train + n_test > n:
            raise UsageError(
                f"train ({n_train}) and test ({n_test}) items exceed the {n} there are"
            )
        if n_train == 0:
            raise UsageError(f"with {n} items that split leaves the train part empty")
        if shuffle:
            order = np.random.default_rng(seed).permutation(n)
            test, train = order[:n_test], order[n_test : n_test + n_train]
        else:
            train, test = np.arange(n_train), np.arange(n_train, n_train + n_test)
        return {"train": self.select(train), "test": self.select(test)}

    def map(
        self,
        function: Callable[..., dict | None],
        with_indices: bool = False,
        remove_columns: str | list[str] | None = None,
    ) -> SplitDataset:
        """A view whose items are `item | function(item)` (`function(item, i)` with
        `with_indices`, `i` the item's index here, kept through later `select`s), less
        `remove_columns`. Lazy, unlike HF's: the function runs on every read of an item,
        nothing is written."""
        remove = (
            (remove_columns,) if isinstance(remove_columns, str) else tuple(remove_columns or ())
        )
        indices = np.arange(len(self), dtype=np.int64) if with_indices else None
        return self._view(maps=(*self._maps, (function, remove, indices)))

    def with_transform(self, transform: Callable[[dict], dict] | None) -> SplitDataset:
        """A view that formats what indexing gives, as HF's `with_transform`: `transform` takes
        a batch (a dict of lists; `ds[i]` passes a batch of one) and returns one."""
        return self._view(batch_transform=transform)

    def to_hf(self, cache_dir: str | None = None) -> datasets.Dataset:
        """A `datasets.Dataset` (Hugging Face) of the same items over the same shards; see
        `mrw.loader.hf.as_hf_dataset`."""
        from mrw.loader.hf import as_hf_dataset

        return as_hf_dataset(self, cache_dir=cache_dir)

    def __repr__(self) -> str:
        return (
            f"SplitDataset({self.name!r}, split={self.split!r}, modality={self.modality!r}, "
            f"items={len(self)})"
        )


def _as_batch(items: list[dict]) -> dict[str, list[Any]]:
    """Items as a dict of lists, as HF returns several rows."""
    return {c: [item.get(c) for item in items] for c in items[0]}
