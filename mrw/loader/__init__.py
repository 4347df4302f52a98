"""`load_dataset`: a split's catalog and one stage's shards as a torch Dataset.

Nothing is copied: opening a split reads the catalog and the `id` column of each complete shard
and keeps, for every item, where its row sits (shard, row group, row) (`index`). `ds[i]` then
reads one row group of one shard (stages write row groups of about 1 MiB,
`mrw.shards.ROW_GROUP_BYTES`; `rowgroups`), or with `arrow_cache=True` one record batch of an
uncompressed Arrow copy. Open files are per process and dropped after a fork or a pickle, so
DataLoader workers never share a handle. Items come in catalog order; items without a row in
the stage (failed downloads) are skipped, and `.ids` says which items are there. Split specs
follow Hugging Face `datasets` (`splits`); the map-style dataset has HF's usual methods
(`dataset`), the streaming one deals items fairly over ranks and workers (`streaming`).

    >>> from mrw import load_dataset
    >>> ds = load_dataset("mrw", split="test", modality="features", num_frames=8)
    >>> item = ds[0]        # {"id", "sentences", "sentence", "sentence_id", "features", ...}
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal, Union, overload

import numpy as np
import torch

from mrw import paths
from mrw.catalog import read_catalog
from mrw.errors import UsageError
from mrw.loader.buffers import Spare, convert
from mrw.loader.collate import collate_frames, resize_frames
from mrw.loader.dataset import SplitDataset
from mrw.loader.index import MODALITIES, SplitIndex, stage_command, stage_dir
from mrw.loader.splits import SplitError, SplitSlice, parse_split, select_ranges
from mrw.loader.streaming import StreamingSplitDataset
from mrw.sampling import EDGE_FRAMES, MAX_RANDOM_SKIP, SAMPLINGS, sample_frame_indices

__all__ = [
    "EDGE_FRAMES",
    "MAX_RANDOM_SKIP",
    "MODALITIES",
    "SAMPLINGS",
    "LoadedSplit",
    "Spare",
    "SplitDataset",
    "SplitError",
    "SplitIndex",
    "SplitSlice",
    "StreamingSplitDataset",
    "collate_frames",
    "convert",
    "load_dataset",
    "parse_split",
    "resize_frames",
    "sample_frame_indices",
    "stage_command",
    "stage_dir",
]


#: what `load_dataset` gives for one split (the alias is evaluated at runtime: `Union`)
LoadedSplit = Union[SplitDataset, StreamingSplitDataset]


@overload
def load_dataset(
    name: str,
    split: str,
    root: str | os.PathLike[str] | None = ...,
    modality: str = ...,
    backbone: str = ...,
    num_frames: int | None = ...,
    sampling: str = ...,
    transform: Callable | None = ...,
    streaming: Literal[False] = ...,
    seed: int | None = ...,
    shuffle_buffer: int = ...,
    rank: int | None = ...,
    world_size: int | None = ...,
    dtype: torch.dtype = ...,
    arrow_cache: bool = ...,
) -> SplitDataset: ...


@overload
def load_dataset(
    name: str,
    split: str,
    root: str | os.PathLike[str] | None = ...,
    modality: str = ...,
    backbone: str = ...,
    num_frames: int | None = ...,
    sampling: str = ...,
    transform: Callable | None = ...,
    *,
    streaming: Literal[True],
    seed: int | None = ...,
    shuffle_buffer: int = ...,
    rank: int | None = ...,
    world_size: int | None = ...,
    dtype: torch.dtype = ...,
    arrow_cache: bool = ...,
) -> StreamingSplitDataset: ...


@overload
def load_dataset(
    name: str,
    split: None = ...,
    root: str | os.PathLike[str] | None = ...,
    modality: str = ...,
    backbone: str = ...,
    num_frames: int | None = ...,
    sampling: str = ...,
    transform: Callable | None = ...,
    streaming: Literal[False] = ...,
    seed: int | None = ...,
    shuffle_buffer: int = ...,
    rank: int | None = ...,
    world_size: int | None = ...,
    dtype: torch.dtype = ...,
    arrow_cache: bool = ...,
) -> dict[str, SplitDataset]: ...


@overload
def load_dataset(
    name: str,
    split: None = ...,
    root: str | os.PathLike[str] | None = ...,
    modality: str = ...,
    backbone: str = ...,
    num_frames: int | None = ...,
    sampling: str = ...,
    transform: Callable | None = ...,
    *,
    streaming: Literal[True],
    seed: int | None = ...,
    shuffle_buffer: int = ...,
    rank: int | None = ...,
    world_size: int | None = ...,
    dtype: torch.dtype = ...,
    arrow_cache: bool = ...,
) -> dict[str, StreamingSplitDataset]: ...


@overload
def load_dataset(
    name: str,
    split: str | None = ...,
    root: str | os.PathLike[str] | None = ...,
    modality: str = ...,
    backbone: str = ...,
    num_frames: int | None = ...,
    sampling: str = ...,
    transform: Callable | None = ...,
    streaming: bool = ...,
    seed: int | None = ...,
    shuffle_buffer: int = ...,
    rank: int | None = ...,
    world_size: int | None = ...,
    dtype: torch.dtype = ...,
    arrow_cache: bool = ...,
) -> LoadedSplit | dict[str, SplitDataset] | dict[str, StreamingSplitDataset]: ...


def load_dataset(
    name: str,
    split: str | None = None,
    root: str | os.PathLike[str] | None = None,
    modality: str = "features",
    backbone: str = "resnet152",
    num_frames: int | None = None,
    sampling: str = "uniform",
    transform: Callable | None = None,
    streaming: bool = False,
    seed: int | None = 0,
    shuffle_buffer: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    arrow_cache: bool = False,
) -> LoadedSplit | dict[str, SplitDataset] | dict[str, StreamingSplitDataset]:
    """Load a split of MRW, TGIF or COCO from the shards under `root` (no copy is made).

    Args:
        name: `mrw`, `tgif` or `coco`.
        split: `train`, `val` (or `valid`), `test`, a slice such as `train[:10%]`,
            `test[100:200]`, `train[-10%:]`, `train[:10%](pct1_dropremainder)`, or a
            concatenation `train[:10%]+val`, computed exactly as Hugging Face `datasets`
            computes them (`mrw.loader.splits`). Slices count the items the stage holds, in
            catalog order; a slice that selects nothing is refused (`SplitError`, a
            `ValueError`). `None`: a dict of every split that has a catalog under `root`.
        root: the data root (default `$MRW_HOME`, else `~/.cache/mrw`).
        modality: `features` (float32 `[T, D]`; COCO: the 7x7 grid `[49, D]` plus `pooled` `[D]`),
            `frames` (uint8 `[T, H, W, 3]`; COCO: T = 1; batch them with `collate_frames`) or
            `video` (`video` bytes, `format`, and the probe: `sha256`, `num_frames`, `fps`,
            `width`, `height`, `duration`).
        backbone: which feature shards (`features/<backbone>/`).
        num_frames: frames (or feature rows) per video item, like the reference's
            `max_video_length`; `None` keeps all. Short clips repeat their last frame.
        sampling: `uniform` (equal intervals; evaluation; TGIF leaves out 6 frames at each end
            of clips long enough, as the reference did) or `random` (a random run with a random
            skip of 1-3; training). `random` also picks `sentence` at random among the protocol's
            sentences (COCO's five captions); `uniform` takes the first one.
        transform: applied to the item's `features`, `frames` or `video` value; its result
            replaces that value (`resize_frames((H, W))` makes frames of one size).
        dtype: of `features` (`torch.float32`; `torch.float16` is what the shards store, half
            the memory and a little faster).
        streaming: an `IterableDataset` (see `StreamingSplitDataset`) instead of a map-style one;
            `seed`, `shuffle_buffer`, `rank` and `world_size` (default: torch.distributed's, if
            initialised) apply to it.
        arrow_cache: `ds[i]` reads an uncompressed Arrow copy of the stage's shards (made on
            first use under `<stage>/.arrow/`, again when a shard changes; as much disk as the
            data) instead of decoding a Parquet row group: random access about as fast as
            Hugging Face `datasets`, which keeps such a copy for every dataset.

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
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise UsageError(f"seed must be an integer or None, got {seed!r}")
    if not isinstance(arrow_cache, bool):
        raise UsageError(f"arrow_cache must be True or False, got {arrow_cache!r}")
    options: dict[str, Any] = dict(
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
        arrow_cache=arrow_cache,
    )
    if split is None:
        present = [s for s in paths.SPLITS if paths.catalog_path(root, name, s).exists()]
        if not present:
            read_catalog(root, name, "train")  # raises, naming the command to run
        return {s: load_dataset(name, s, **options) for s in present}

    indexes: dict[str, SplitIndex] = {}
    for part in parse_split(split):
        if part.split not in indexes:
            indexes[part.split] = SplitIndex.open(root, name, part.split, modality, backbone)
    order = list(indexes)
    ranges = select_ranges(split, {s: len(index) for s, index in indexes.items()})
    which = np.concatenate(
        [np.full(max(0, b - a), order.index(s), np.int32) for s, a, b in ranges]
    ).astype(np.int32)
    positions = np.concatenate(
        [np.arange(a, max(a, b), dtype=np.int64) for _, a, b in ranges]
    ).astype(np.int64)
    common: dict[str, Any] = dict(
        name=name,
        spec=str(split),
        modality=modality,
        backbone=backbone,
        num_frames=num_frames,
        sampling=sampling,
        transform=transform,
        dtype=dtype,
        arrow_cache=arrow_cache,
    )
    parts = [indexes[s] for s in order]
    if streaming:
        return StreamingSplitDataset(
            parts,
            which,
            positions,
            seed=seed,
            shuffle_buffer=shuffle_buffer,
            rank=rank,
            world_size=world_size,
            **common,
        )
    return SplitDataset(parts, which, positions, **common)
