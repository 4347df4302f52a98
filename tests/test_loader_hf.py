"""The Hugging Face style methods of the map-style dataset, checked against `datasets` itself
where it is installed (same ids for `select`, `filter`, `shuffle`, `train_test_split`), and the
Arrow copy, `collate_frames`, and shards that are not Parquet."""

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from test_loader_dataset import DIM, f16, shard_rows, write_split
from torch.utils.data import DataLoader

from mrw import load_dataset, paths
from mrw.errors import UsageError
from mrw.loader import collate_frames, resize_frames


@pytest.fixture
def split(tmp_path):
    write_split(tmp_path, "mrw", "train", 30, shard_size=8, failed={4, 17}, row_group_size=3)
    return tmp_path


def _hf_ids(ids):
    datasets = pytest.importorskip("datasets")
    return datasets.Dataset.from_dict({"id": ids})


def test_indexing_slices_lists_columns_and_descriptions(split):
    ds = load_dataset("mrw", split="train", root=split)
    ids = ds.ids
    assert ds.num_rows == len(ds) == 28
    assert ds.column_names == list(ds[0]) and list(ds.features) == ds.column_names
    assert ds.features["features"] == "float32 tensor [T, D]"
    assert ds["id"] == ids
    assert ds["sentences"] == [ds[i]["sentences"] for i in range(len(ds))]
    assert ds["sentence"] == [ds[i]["sentence"] for i in range(len(ds))]
    stored = shard_rows(paths.features_dir(split, "mrw", "train"))
    assert ds["num_frames"] == [stored[i]["num_frames"] for i in ids]  # metadata, no media
    batch = ds[3:7]
    assert list(batch) == ds.column_names and batch["id"] == ids[3:7]
    for j, k in enumerate(range(3, 7)):
        assert torch.equal(batch["features"][j], ds[k]["features"])
    picked = ds[[5, 0, -1]]
    assert picked["id"] == [ids[5], ids[0], ids[-1]]
    assert ds[np.array([2, 2])]["id"] == [ids[2], ids[2]]
    assert ds[10:10] == {c: [] for c in ds.column_names}
    hf = _hf_ids(ids)
    assert ds[3:7]["id"] == hf[3:7]["id"] and ds[::-3]["id"] == hf[::-3]["id"]
    with pytest.raises(KeyError):
        ds["nope"]
    with pytest.raises(IndexError):
        ds[[0, 28]]


def test_select_filter_shuffle_split_return_what_hf_returns(split):
    ds = load_dataset("mrw", split="train", root=split)
    ids = ds.ids
    hf = _hf_ids(ids)
    view = ds.select([7, 2, -1, 2])
    assert view.ids == hf.select([7, 2, 27, 2])["id"]  # HF's select takes no negative index
    assert view._indexes[0] is ds._indexes[0]  # a view over the same index, nothing copied
    assert ds.select(range(3, 9)).ids == hf.select(range(3, 9))["id"]
    assert ds.select([]).ids == [] and len(ds.select([])) == 0
    for seed in (0, 42):
        assert ds.shuffle(seed=seed).ids == hf.shuffle(seed=seed)["id"]
    assert sorted(ds.shuffle().ids) == sorted(ids)

    def odd(x):
        return x["id"][-1] in "13579"

    assert ds.filter(odd).ids == hf.filter(odd)["id"]
    assert (
        ds.filter(lambda x, i: i % 3 == 0, with_indices=True).ids
        == (hf.filter(lambda x, i: i % 3 == 0, with_indices=True)["id"])
    )
    assert (
        ds.filter(lambda i: i.endswith("2"), input_columns="id").ids
        == (hf.filter(lambda i: i.endswith("2"), input_columns="id")["id"])
    )
    long_ones = ds.filter(lambda n: n > 6, input_columns=["num_frames"])
    assert long_ones.ids == [item["id"] for item in ds if item["features"].shape[0] > 6]
    assert ds.shuffle(seed=1).filter(odd).ids == hf.shuffle(seed=1).filter(odd)["id"]
    for kwargs in (
        {"test_size": 0.2, "seed": 1},
        {"test_size": 5, "train_size": 10, "seed": 3},
        {"train_size": 0.5, "seed": 0},
        {"test_size": 0.3, "shuffle": False},
    ):
        ours, theirs = ds.train_test_split(**kwargs), hf.train_test_split(**kwargs)
        assert ours["train"].ids == theirs["train"]["id"], kwargs
        assert ours["test"].ids == theirs["test"]["id"], kwargs
    for bad in ({"test_size": 0}, {"test_size": 1.5}, {"test_size": 28}, {"test_size": "x"}):
        with pytest.raises(UsageError):
            ds.train_test_split(**bad)
    # a view of a view, and reading through it equals reading the whole
    nested = ds.shuffle(seed=2).select(range(10)).filter(odd)
    for item in nested:
        assert torch.equal(item["features"], ds[ids.index(item["id"])]["features"])


def test_map_is_lazy_and_with_transform_formats_batches(split):
    ds = load_dataset("mrw", split="train", root=split)
    calls = []

    def count(item, i):
        calls.append(i)
        return {"length": item["features"].shape[0], "index": i}

    mapped = ds.map(count, with_indices=True, remove_columns=["sentences"])
    assert calls == []  # lazy: nothing read yet
    first = mapped[4]
    assert calls == [4] and first["length"] == ds[4]["features"].shape[0] and first["index"] == 4
    assert "sentences" not in first and "length" in mapped.column_names
    assert [item["index"] for item in mapped] == list(range(len(ds)))
    assert mapped["length"] == [item["features"].shape[0] for item in ds]
    assert mapped.select([3, 1])["index"] == [3, 1]  # map indices are the view's own
    with pytest.raises(UsageError):
        ds.map(lambda item: 3)[0]

    def upper(batch):
        return {"id": [i.upper() for i in batch["id"]], "n": [len(batch["id"])] * len(batch["id"])}

    shown = ds.with_transform(upper)
    assert shown[0] == {"id": ds.ids[0].upper(), "n": 1}
    assert shown[2:5] == {"id": [i.upper() for i in ds.ids[2:5]], "n": [3, 3, 3]}
    assert shown["id"] == [i.upper() for i in ds.ids]
    hf = _hf_ids(ds.ids).with_transform(upper)
    assert shown[0] == hf[0] and shown[2:5] == hf[2:5]
    assert ds[0]["id"] == ds.ids[0]  # the original is left as it was


def test_to_pandas_and_to_hf(split):
    pytest.importorskip("datasets")
    ds = load_dataset("mrw", split="train", root=split).select([9, 2, 20])
    df = ds.to_pandas()
    assert df["id"].tolist() == ds.ids
    hf = ds.to_hf(cache_dir=str(split / "hf-cache"))
    assert hf["id"] == ds.ids and hf.num_rows == 3
    stored = shard_rows(paths.features_dir(split, "mrw", "train"))
    for row in hf:
        assert row["features"] == stored[row["id"]]["features"]
        assert row["sentences"] == ds[ds.ids.index(row["id"])]["sentences"]
    joined = load_dataset("mrw", split="train[:2]+train[-1:]", root=split).to_hf(
        cache_dir=str(split / "hf-cache")
    )
    assert joined["id"] == load_dataset("mrw", split="train[:2]+train[-1:]", root=split).ids


def test_arrow_cache_gives_the_same_items_and_follows_shard_changes(split):
    plain = load_dataset("mrw", split="train", root=split)
    cached = load_dataset("mrw", split="train", root=split, arrow_cache=True, num_frames=2)
    sampled = load_dataset("mrw", split="train", root=split, num_frames=2)
    for i in (0, 27, 13, 5, 13):
        assert torch.equal(cached[i]["features"], sampled[i]["features"])
        assert cached[i]["id"] == plain[i]["id"]
    folder = paths.features_dir(split, "mrw", "train")
    copies = sorted((folder / ".arrow").glob("shard-*.arrow"))
    assert [c.name for c in copies] == [f"shard-0000{k}.arrow" for k in (0, 1, 3)]  # those read
    # a shard written again (a rerun): the copy is made again, never served stale
    shard = folder / "shard-00000.parquet"
    table = pq.read_table(shard)
    feats = table.column("features").to_pylist()
    feats[0] = (np.frombuffer(feats[0], "<f2") + 1).astype("<f2").tobytes()
    pq.write_table(table.set_column(1, "features", [feats]), shard, row_group_size=3)
    fresh = load_dataset("mrw", split="train", root=split, arrow_cache=True)
    want = f16(feats[0], (3, DIM))
    np.testing.assert_array_equal(fresh[0]["features"].numpy(), want)
    clone = DataLoader(fresh, batch_size=None, num_workers=1)
    assert [item["id"] for item in clone][:3] == plain.ids[:3]


def test_a_shard_that_is_not_parquet_names_the_file_and_what_to_run(tmp_path):
    write_split(tmp_path, "mrw", "test", 20, shard_size=10)
    shard = paths.features_dir(tmp_path, "mrw", "test") / "shard-00001.parquet"
    good = shard.read_bytes()
    for garbage in (b"<html>not found</html>", good[: len(good) // 2], b""):
        shard.write_bytes(garbage)
        with pytest.raises(UsageError) as caught:
            load_dataset("mrw", split="test", root=tmp_path)
        message = str(caught.value)
        assert str(shard) in message and "mrw validate --dataset mrw --split test" in message
        assert "delete it and rerun `mrw extract-features" in message and "\n" not in message
    shard.write_bytes(good)
    ds = load_dataset("mrw", split="test", root=tmp_path)
    shard.write_bytes(b"PAR1 garbage after opening PAR1")  # changed under an open dataset
    with pytest.raises(UsageError, match=r"shard-00001\.parquet"):
        ds[15]


def test_collate_frames_pads_clips_of_different_sizes(tmp_path):
    sizes = {0: (12, 16), 1: (20, 8), 2: (16, 24)}
    write_split(
        tmp_path,
        "mrw",
        "test",
        3,
        modalities=("frames",),
        frames_of=lambda i: 2 + i,
        frame_size_of=lambda i: sizes[i],
    )
    ds = load_dataset("mrw", split="test", root=tmp_path, modality="frames")
    items = [ds[i] for i in range(3)]
    batch = collate_frames(items)
    assert batch["frames"].shape == (3, 4, 20, 24, 3) and batch["frames"].dtype == torch.uint8
    assert batch["frame_lengths"].tolist() == [2, 3, 4]
    assert batch["frame_sizes"].tolist() == [list(sizes[i]) for i in range(3)]
    for b, item in enumerate(items):
        t, h, w, _ = item["frames"].shape
        assert torch.equal(batch["frames"][b, :t, :h, :w], item["frames"])
        assert batch["frames"][b, t:].sum() == 0 and batch["frames"][b, :, h:].sum() == 0
        assert batch["timestamps"][b, :t].tolist() == item["timestamps"].tolist()
    assert batch["id"] == ds.ids
    loader = DataLoader(ds, batch_size=3, collate_fn=collate_frames)
    assert next(iter(loader))["frames"].shape == (3, 4, 20, 24, 3)
    with pytest.raises(RuntimeError):  # what the default collate does with them
        next(iter(DataLoader(ds, batch_size=3)))
    # a resize transform instead: frames of one size, stacked by the default collate
    same = load_dataset(
        "mrw",
        split="test",
        root=tmp_path,
        modality="frames",
        num_frames=2,
        transform=resize_frames((10, 10)),
    )
    stacked = next(iter(DataLoader(same, batch_size=3)))
    assert stacked["frames"].shape == (3, 2, 10, 10, 3)
    jpeg = shard_rows(paths.frames_dir(tmp_path, "mrw", "test"))[same.ids[0]]["frames"][0]
    original = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    assert abs(int(stacked["frames"][0, 0].float().mean()) - int(original.mean())) <= 2
    for bad in ((0, 10), (10,), (10.5, 3)):
        with pytest.raises(UsageError):
            resize_frames(bad)
    with pytest.raises(UsageError):
        collate_frames([])
