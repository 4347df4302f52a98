"""Streaming under torch.distributed: two gloo ranks (spawned processes on 127.0.0.1), each
with two DataLoader workers, stream every item exactly once, ranks within one item."""

import json
import multiprocessing
import socket
from collections import Counter

import pytest
import torch
from test_loader_dataset import write_split
from torch.utils.data import DataLoader

from mrw import load_dataset
from mrw.errors import UsageError

WORLD = 2
WORKERS = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, root: str, out: str, worker_context: str) -> None:
    import torch.distributed as dist

    # made before the process group exists, as a training script often does
    ds = load_dataset("tgif", split="train", root=root, streaming=True)
    shuffled = ds.shuffle(seed=5, buffer_size=8)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        got = {}
        for name, stream in (("plain", ds), ("shuffled", shuffled)):
            loader = DataLoader(
                stream,
                batch_size=None,
                num_workers=WORKERS,
                multiprocessing_context=worker_context,
            )
            got[name] = [item["id"] for item in loader]
        with open(out, "w") as fh:
            json.dump(got, fh)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("worker_context", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_two_gloo_ranks_two_workers_each_item_once_ranks_within_one(tmp_path, worker_context):
    # 50 items in 6 shards of 9 (the last one 5) and row groups of 4: no even deal of shards,
    # row groups or runs of row groups exists
    rows = write_split(
        tmp_path, "tgif", "train", 53, shard_size=9, failed={7, 30, 31}, row_group_size=4
    )
    ids = sorted(r["id"] for i, r in enumerate(rows) if i not in {7, 30, 31})
    port = _free_port()
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=_rank_main,
            args=(r, port, str(tmp_path), str(tmp_path / f"rank{r}.json"), worker_context),
        )
        for r in range(WORLD)
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=240)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=10)
    assert [p.exitcode for p in procs] == [0] * WORLD
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for name in ("plain", "shuffled"):
        per_rank = [res[name] for res in results]
        everything = [i for part in per_rank for i in part]
        assert Counter(everything) == Counter(ids), name  # every item exactly once
        sizes = [len(part) for part in per_rank]
        assert max(sizes) - min(sizes) <= 1, (name, sizes)


def test_ranks_and_workers_get_contiguous_even_stretches(tmp_path):
    write_split(tmp_path, "mrw", "train", 47, shard_size=10, row_group_size=3)
    ids = load_dataset("mrw", split="train", root=tmp_path).ids
    for world in (1, 2, 3, 5):
        parts = []
        for rank in range(world):
            ds = load_dataset(
                "mrw", split="train", root=tmp_path, streaming=True, rank=rank, world_size=world
            )
            parts.append([item["id"] for item in DataLoader(ds, batch_size=None, num_workers=2)])
        assert sorted(i for p in parts for i in p) == ids
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1, (world, sizes)
        if world == 2:  # unshuffled: each rank (2 workers) a stretch of the catalog
            assert sorted(parts[0]) == ids[:23] and sorted(parts[1]) == ids[23:]


def test_take_skip_shuffle_set_epoch(tmp_path):
    write_split(tmp_path, "mrw", "train", 40, shard_size=10, row_group_size=4)
    stream = load_dataset("mrw", split="train", root=tmp_path, streaming=True)
    ids = [item["id"] for item in stream]
    assert [item["id"] for item in stream.take(7)] == ids[:7]
    assert [item["id"] for item in stream.skip(33)] == ids[33:]
    assert [item["id"] for item in stream.skip(5).take(4)] == ids[5:9]
    assert [item["id"] for item in stream.take(9).skip(5)] == ids[5:9]
    assert list(stream.take(0)) == [] and list(stream.skip(100)) == []
    shuffled = stream.shuffle(seed=3, buffer_size=10)
    first = [item["id"] for item in shuffled]
    assert sorted(first) == sorted(ids) and first != ids
    assert [item["id"] for item in shuffled] == first  # same seed and epoch: same order
    shuffled.set_epoch(1)
    second = [item["id"] for item in shuffled]
    assert sorted(second) == sorted(ids) and second != first
    other = stream.shuffle(seed=4, buffer_size=10)
    assert [item["id"] for item in other] != first
    assert [item["id"] for item in stream] == ids  # the views left the stream as it was
    assert stream.column_names == list(stream.take(1).__iter__().__next__())
    for bad in (
        lambda: stream.take(-1),
        lambda: stream.skip(1.5),
        lambda: stream.shuffle(buffer_size=0),
        lambda: stream.set_epoch(-1),
    ):
        with pytest.raises(UsageError):
            bad()


def test_rank_seen_in_the_main_process_reaches_a_worker(tmp_path, monkeypatch):
    """The rank the main process saw when it sent the dataset to a worker is the one the worker
    uses when torch.distributed is not set up there."""
    import pickle

    write_split(tmp_path, "mrw", "train", 20, shard_size=10, row_group_size=2)
    ids = load_dataset("mrw", split="train", root=tmp_path).ids
    ds = load_dataset("mrw", split="train", root=tmp_path, streaming=True)
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    sent = pickle.dumps(ds)  # what a spawned worker receives
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    worker_copy = pickle.loads(sent)
    assert [item["id"] for item in worker_copy] == ids[10:]
