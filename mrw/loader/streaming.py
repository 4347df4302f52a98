"""The streaming dataset: row groups read in order (or in a seeded permuted order) and dealt
to every (distributed rank, DataLoader worker) pair in contiguous stretches of items, so that
each item comes once per epoch and any two ranks (and workers) get within one item of each
other."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from mrw.errors import UsageError
from mrw.loader.base import SplitBase
from mrw.loader.rowgroups import SEQUENTIAL_GROUPS


def distributed_slot() -> tuple[int, int] | None:
    """(rank, world size) of the process group this process belongs to, if one is set up."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    return None


def _check_count(label: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UsageError(f"{label} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _fresh_seed() -> int:
    """A seed from fresh OS entropy, in 63 bits."""
    entropy = np.random.SeedSequence().entropy
    assert isinstance(entropy, int)  # an int whenever SeedSequence draws it itself
    return entropy % 2**63


class StreamingSplitDataset(SplitBase, IterableDataset):
    """Streaming: `for item in ds`, in shard order. With a shuffle (`shuffle(buffer_size=,
    seed=)`, or `shuffle_buffer` at loading) the row groups come in an order permuted by
    `seed + epoch` and items pass through a shuffle buffer: call `set_epoch(e)` before each
    epoch (before the DataLoader starts its workers, so not with `persistent_workers=True`), and
    give every rank the same seed. `take(n)` and `skip(n)` count items in the stream's order of
    row groups (before the buffer).

    Under torch.distributed, the rank and world size are taken where the process group lives
    (in the main process when the dataset is made, iterated or sent to a spawned worker), or
    given as `rank`/`world_size`; each (rank, worker) gets a contiguous stretch of the epoch's
    items, so ranks and workers differ by at most one item.
    """

    def __init__(
        self,
        *args: Any,
        seed: int | None = 0,
        shuffle_buffer: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.shuffle_buffer = _check_count("shuffle_buffer", shuffle_buffer, 0)
        if (rank is None) != (world_size is None):
            raise UsageError("give both rank and world_size, or neither")
        if world_size is not None:
            world_size = _check_count("world_size", world_size, 1)
            rank = _check_count("rank", rank, 0)
            if rank >= world_size:
                raise UsageError(f"rank {rank} is not within world_size {world_size}")
        self.seed = int(seed) if seed is not None else _fresh_seed()
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._start = 0  # skip / take
        self._length: int | None = None
        self._seen_distributed = distributed_slot()
        self._units = self._make_units()

    def _make_units(self) -> list[tuple[int, int, int, np.ndarray]]:
        """(index, shard, row group, positions of the selected items in it, in file order), in
        the dataset's order of indexes and, within each stretch of one index, file order."""
        if not len(self._pos):
            return []
        which, pos = self._which, self._pos
        segment = np.concatenate([[0], np.cumsum(np.diff(which) != 0)])
        shard = np.empty(len(pos), np.int64)
        group = np.empty(len(pos), np.int64)
        row = np.empty(len(pos), np.int64)
        for k, index in enumerate(self._indexes):
            sel = which == k
            shard[sel] = index.shard[pos[sel]]
            group[sel] = index.row_group[pos[sel]]
            row[sel] = index.row_in_group[pos[sel]]
        order = np.lexsort((row, group, shard, segment))
        key = np.stack([segment, shard, group], axis=1)[order]
        cuts = np.flatnonzero((np.diff(key, axis=0) != 0).any(axis=1)) + 1
        return [
            (int(which[c[0]]), int(shard[c[0]]), int(group[c[0]]), pos[c])
            for c in np.split(order, cuts)
        ]

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        # pickled for a spawned worker: this is still the process that holds the process group
        state["_seen_distributed"] = distributed_slot() or self._seen_distributed
        return state

    # -- views -----------------------------------------------------------------------------
    def shuffle(self, seed: int | None = None, buffer_size: int = 1000) -> StreamingSplitDataset:
        """Row groups in a permuted order and items through a buffer of `buffer_size`, as HF's
        `IterableDataset.shuffle`; both seeded by `seed + epoch`."""
        view = self._view()
        view.shuffle_buffer = _check_count("buffer_size", buffer_size, 1)
        view.seed = int(seed) if seed is not None else _fresh_seed()
        return view

    def skip(self, n: int) -> StreamingSplitDataset:
        """The stream less its first `n` items."""
        n = _check_count("n", n, 0)
        view = self._view()
        view._start = self._start + n
        view._length = None if self._length is None else max(0, self._length - n)
        return view

    def take(self, n: int) -> StreamingSplitDataset:
        """The first `n` items of the stream."""
        n = _check_count("n", n, 0)
        view = self._view()
        view._length = n if self._length is None else min(self._length, n)
        return view

    def set_epoch(self, epoch: int) -> None:
        self.epoch = _check_count("epoch", epoch, 0)

    @property
    def column_names(self) -> list[str]:
        return self._base_columns()

    # -- dealing ---------------------------------------------------------------------------
    def _slot(self) -> tuple[int, int]:
        """(this reader's slot, slots): one per (rank, DataLoader worker) pair."""
        if self.rank is not None and self.world_size is not None:  # both or neither
            rank, world = self.rank, self.world_size
        else:
            rank, world = distributed_slot() or self._seen_distributed or (0, 1)
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * nw + wid, world * nw

    def _my_units(self, slot: int, slots: int) -> list[tuple[int, int, int, np.ndarray]]:
        """The units of this slot's stretch of the epoch's items (the first and last cut)."""
        order = np.arange(len(self._units))
        if self.shuffle_buffer:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self._units))
        sizes = np.array([len(self._units[u][3]) for u in order], np.int64)
        ends = np.cumsum(sizes)
        total = int(ends[-1]) if len(ends) else 0
        lo = min(self._start, total)
        hi = total if self._length is None else min(total, lo + self._length)
        m = hi - lo
        a, b = lo + slot * m // slots, lo + (slot + 1) * m // slots
        mine = []
        for u, end, size in zip(order.tolist(), ends.tolist(), sizes.tolist()):
            start = end - size
            if end <= a or start >= b:
                continue
            k, s, g, pos = self._units[u]
            mine.append((k, s, g, pos[max(a, start) - start : min(b, end) - start]))
        return mine

    def __iter__(self) -> Iterator[dict]:
        if get_worker_info() is None:  # the main process: where a process group would live
            self._seen_distributed = distributed_slot() or self._seen_distributed
        slot, slots = self._slot()
        units = self._my_units(slot, slots)
        # consecutive row groups of a shard travel together, SEQUENTIAL_GROUPS at most
        jobs: list[tuple[int, int, int, int, np.ndarray]] = []
        for k, s, g, pos in units:
            last = jobs[-1] if jobs else None
            if (
                last
                and last[0] == k
                and last[1] == s
                and g == last[3] + 1
                and g < last[2] + SEQUENTIAL_GROUPS
            ):
                jobs[-1] = (k, s, last[2], g, np.concatenate([last[4], pos]))
            else:
                jobs.append((k, s, g, g, pos))
        rng = random.Random(f"{self.seed}/{self.epoch}/{slot}")
        buffer: list[dict] = []
        read = [(self._indexes[k], s, first, last, pos) for k, s, first, last, pos in jobs]
        for job, group, rows in self._read_runs(read):
            for p, row in zip(job[4].tolist(), rows):
                item = self._finish(self._make_item(job[0], p, group, row), -1)
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
            f"modality={self.modality!r}, items={len(self._pos)})"
        )
