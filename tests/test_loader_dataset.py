"""load_dataset (mrw.loader) over catalogs and shards written here with the documented schemas."""

import functools
import io
import pickle
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mrw import load_dataset, paths
from mrw.catalog import write_catalog
from mrw.download import VIDEO_SCHEMA
from mrw.errors import UsageError
from mrw.features import FEATURES_SCHEMA as FEATURE_SCHEMA
from mrw.frames import FRAMES_SCHEMA as FRAME_SCHEMA
from mrw.loader import SplitDataset, StreamingSplitDataset, parse_split, sample_frame_indices
from mrw.shards import shard_ranges, write_shard
from mrw.text import Vocabulary, collate_features

DIM = 8


def _catalog_rows(dataset, split, n):
    rows = []
    for i in range(n):
        item = f"{split}{i:04d}"
        if dataset == "coco":
            sentences = [f"caption {k} of image {i}" for k in range(5 + i % 2)]
            rows.append(
                {
                    "id": item,
                    "sentences": sentences,
                    "url": None,
                    "protocol_sentences": [0, 1, 2, 3, 4],
                    "cocoid": i,
                    "filepath": "val2014",
                    "filename": f"{item}.jpg",
                }
            )
        elif dataset == "tgif":
            sentences = [f"a cat number {i} jumps", f"a dog number {i} runs"][: 1 + i % 2]
            rows.append(
                {
                    "id": item,
                    "sentences": sentences,
                    "url": f"http://x/{item}.gif",
                    "protocol_sentences": [len(sentences) - 1],
                }
            )
        else:
            rows.append(
                {
                    "id": item,
                    "sentences": [f"mrw when item {i} happens"],
                    "url": f"http://x/{item}.mp4",
                    "protocol_sentences": [0],
                }
            )
    return rows


def _jpeg(i, t, size=(12, 16)):
    img = np.zeros((*size, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = (i * 37) % 256, (t * 29) % 256, 128
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_split(
    root,
    dataset,
    split,
    n,
    *,
    shard_size=7,
    failed=(),
    modalities=("features",),
    row_group_size=None,
    frames_of=lambda i: 3 + i % 9,
    frame_size_of=lambda i: (12, 16),
):
    """A catalog of `n` items and shards of each modality; items in `failed` have no row."""
    rows = _catalog_rows(dataset, split, n)
    write_catalog(rows, root, dataset, split)
    rng = np.random.default_rng(len(split) * 1000 + n)
    for modality in modalities:
        folder = {
            "features": paths.features_dir(root, dataset, split),
            "frames": paths.frames_dir(root, dataset, split),
            "video": paths.videos_dir(root, dataset, split),
        }[modality]
        for k, (a, b) in enumerate(shard_ranges(n, shard_size)):
            data, status = [], []
            for i in range(a, b):
                item = rows[i]["id"]
                ok = i not in failed
                status.append(
                    {
                        "id": item,
                        "url": rows[i]["url"],
                        "status": "ok" if ok else "failed",
                        "error": None if ok else "http_404: gone",
                        "attempts": 1,
                    }
                )
                if not ok:
                    continue
                t = 1 if dataset == "coco" else frames_of(i)
                stamps = [j / 8 for j in range(t)]
                if modality == "features":
                    feats = rng.standard_normal((t, DIM)).astype("<f2")
                    row = {
                        "id": item,
                        "features": feats.tobytes(),
                        "num_frames": t,
                        "dim": DIM,
                        "timestamps": stamps,
                    }
                    if dataset == "coco":
                        row["grid"] = rng.standard_normal((49, DIM)).astype("<f2").tobytes()
                elif modality == "frames":
                    height, width = frame_size_of(i)
                    row = {
                        "id": item,
                        "frames": [_jpeg(i, j, (height, width)) for j in range(t)],
                        "timestamps": stamps,
                        "num_frames": t,
                        "width": width,
                        "height": height,
                    }
                else:
                    blob = rng.bytes(100 + i)
                    row = {
                        "id": item,
                        "video": blob,
                        "format": "mp4",
                        "sha256": f"sha{i}",
                        "num_frames": t,
                        "fps": 8.0,
                        "width": 16,
                        "height": 12,
                        "duration": t / 8,
                    }
                data.append(row)
            schema = {"features": FEATURE_SCHEMA, "frames": FRAME_SCHEMA, "video": VIDEO_SCHEMA}[
                modality
            ]
            if modality == "features" and dataset == "coco":
                schema = schema.append(pa.field("grid", pa.binary()))
            options = {"row_group_size": row_group_size} if row_group_size else {}
            write_shard(
                folder,
                k,
                pa.Table.from_pylist(data, schema=schema) if data else None,
                status,
                **options,
            )
    return rows


def shard_rows(folder):
    """Every data row of a stage folder, read straight with pyarrow: id -> row dict."""
    out = {}
    for f in sorted(Path(folder).glob("shard-*.parquet")):
        for row in pq.read_table(f).to_pylist():
            out[row["id"]] = row
    return out


def f16(blob, shape):
    return np.frombuffer(blob, dtype="<f2").reshape(shape).astype(np.float32)


# -- every modality of every dataset equals what the shards hold ------------------
@pytest.mark.parametrize("dataset", ["mrw", "tgif"])
def test_video_datasets_every_modality_equals_shards(tmp_path, dataset):
    failed = {2, 9, 10}
    rows = write_split(
        tmp_path, dataset, "test", 23, failed=failed, modalities=("features", "frames", "video")
    )
    expected_ids = [r["id"] for i, r in enumerate(rows) if i not in failed]
    by_id = {r["id"]: r for r in rows}

    feats = load_dataset(dataset, split="test", root=tmp_path)
    assert isinstance(feats, SplitDataset) and len(feats) == 20 and feats.ids == expected_ids
    stored = shard_rows(paths.features_dir(tmp_path, dataset, "test"))
    for i, item in enumerate(feats):
        row, cat = stored[item["id"]], by_id[item["id"]]
        assert item["id"] == expected_ids[i]
        assert item["sentences"] == cat["sentences"]
        assert item["sentence"] == cat["sentences"][cat["protocol_sentences"][0]]
        want = f16(row["features"], (row["num_frames"], DIM))
        assert item["features"].dtype == torch.float32
        np.testing.assert_array_equal(item["features"].numpy(), want)
        assert item["timestamps"].tolist() == row["timestamps"]
    if dataset == "tgif":  # the protocol's sentence is the last TSV row of the GIF
        assert feats[1]["sentence"] == by_id[feats[1]["id"]]["sentences"][-1]
        assert feats[1]["sentence_id"] == f"{feats[1]['id']}#1"

    frames = load_dataset(dataset, split="test", root=tmp_path, modality="frames")
    stored = shard_rows(paths.frames_dir(tmp_path, dataset, "test"))
    assert frames.ids == expected_ids
    for i in (0, 7, 19):
        item = frames[i]
        row = stored[item["id"]]
        want = np.stack(
            [np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in row["frames"]]
        )
        assert item["frames"].dtype == torch.uint8 and item["frames"].shape == (
            row["num_frames"],
            12,
            16,
            3,
        )
        np.testing.assert_array_equal(item["frames"].numpy(), want)

    videos = load_dataset(dataset, split="test", root=tmp_path, modality="video")
    stored = shard_rows(paths.videos_dir(tmp_path, dataset, "test"))
    assert videos.ids == expected_ids
    for item in videos:
        row = stored[item["id"]]
        assert {k: item[k] for k in row if k != "id"} == {k: v for k, v in row.items() if k != "id"}


def test_coco_features_grid_pooled_and_captions(tmp_path):
    rows = write_split(
        tmp_path, "coco", "test", 12, failed={5}, modalities=("features", "frames", "video")
    )
    stored = shard_rows(paths.features_dir(tmp_path, "coco", "test"))
    ds = load_dataset("coco", split="test", root=tmp_path)
    assert len(ds) == 11
    for item in ds:
        row = stored[item["id"]]
        assert item["features"].shape == (49, DIM) and item["pooled"].shape == (DIM,)
        np.testing.assert_array_equal(item["features"].numpy(), f16(row["grid"], (49, DIM)))
        np.testing.assert_array_equal(item["pooled"].numpy(), f16(row["features"], (1, DIM))[0])
        assert item["sentence"] == item["sentences"][0]  # uniform: the first protocol caption
    # random sampling: one of the five protocol captions, never the sixth
    train = load_dataset("coco", split="test", root=tmp_path, sampling="random")
    random.seed(0)
    picked = {train[1]["sentence_id"] for _ in range(60)}
    assert picked == {f"{train.ids[1]}#{k}" for k in range(5)}
    image = load_dataset("coco", split="test", root=tmp_path, modality="frames")[0]
    assert image["frames"].shape == (1, 12, 16, 3)
    assert load_dataset("coco", split="test", root=tmp_path, modality="video")[0]["format"] == "mp4"
    assert rows[0]["id"] == ds.ids[0]


# -- slices -------------------------------------------------------------------------------------
def test_slices_give_the_same_ids_as_slicing_the_id_list(tmp_path):
    write_split(tmp_path, "mrw", "train", 40, failed={3, 17})
    write_split(tmp_path, "mrw", "val", 9)
    ids = load_dataset("mrw", split="train", root=tmp_path).ids
    val = load_dataset("mrw", split="val", root=tmp_path).ids
    assert len(ids) == 38
    cases = {
        "train[:10%]": ids[:4],
        "train[10%:20%]": ids[4:8],
        "train[5:12]": ids[5:12],
        "train[-5:]": ids[-5:],
        "train[:-30]": ids[:-30],
        "train[:]": ids,
        "train[:10%]+val": ids[:4] + val,
        "val+train[30:]": val + ids[30:],
        "valid[2:4]": val[2:4],
    }
    for spec, want in cases.items():
        ds = load_dataset("mrw", split=spec, root=tmp_path)
        assert ds.ids == want, spec
        assert [item["id"] for item in ds] == want, spec
    assert parse_split("train[:10%]+val")[1].split == "val"
    for bad in ("train[:10", "train[a:b]", "train[:150%]", "nope", "train[1]", "train[100:200]"):
        with pytest.raises(UsageError):
            load_dataset("mrw", split=bad, root=tmp_path)


def test_all_splits_as_a_dict(tmp_path):
    write_split(tmp_path, "tgif", "train", 10)
    write_split(tmp_path, "tgif", "test", 6)
    splits = load_dataset("tgif", root=tmp_path)
    assert sorted(splits) == ["test", "train"]
    assert len(splits["train"]) == 10 and len(splits["test"]) == 6
    with pytest.raises(UsageError, match="mrw download --dataset mrw"):
        load_dataset("mrw", root=tmp_path)


# -- missing stages and bad input ------------------------------------------------------------------
def test_missing_stage_names_the_command(tmp_path):
    write_split(tmp_path, "mrw", "test", 5, modalities=())
    with pytest.raises(UsageError, match=r"`mrw extract-features --dataset mrw --split test`"):
        load_dataset("mrw", split="test", root=tmp_path)
    with pytest.raises(UsageError, match=r"`mrw extract-frames --dataset mrw --split test`"):
        load_dataset("mrw", split="test", root=tmp_path, modality="frames")
    with pytest.raises(UsageError, match=r"`mrw download --dataset mrw --split test`"):
        load_dataset("mrw", split="test", root=tmp_path, modality="video")
    with pytest.raises(UsageError, match="--backbone resnet50"):
        load_dataset("mrw", split="test", root=tmp_path, backbone="resnet50")
    with pytest.raises(UsageError, match="--catalog-only"):
        load_dataset("tgif", split="test", root=tmp_path)
    for kwargs in (
        {"modality": "audio"},
        {"sampling": "middle"},
        {"num_frames": 0},
        {"dtype": torch.int8},
    ):
        with pytest.raises(UsageError):
            load_dataset("mrw", split="test", root=tmp_path, **kwargs)


def test_unfinished_stage_warns_and_corrupt_rows_are_reported(tmp_path):
    write_split(tmp_path, "mrw", "test", 14, shard_size=7)
    folder = paths.features_dir(tmp_path, "mrw", "test")
    (folder / "status" / "shard-00001.parquet").unlink()  # as if killed before the status write
    with pytest.warns(UserWarning, match="7 of 14 items"):
        ds = load_dataset("mrw", split="test", root=tmp_path)
    assert len(ds) == 7  # a shard counts only once its status file exists

    table = pq.read_table(folder / "shard-00000.parquet")
    feats = table.column("features").to_pylist()
    feats[3] = feats[3][:-2]
    write_shard(
        folder,
        0,
        table.set_column(1, "features", pa.array(feats, pa.binary())),
        pq.read_table(folder / "status" / "shard-00000.parquet").to_pylist(),
    )
    with pytest.warns(UserWarning):
        ds = load_dataset("mrw", split="test", root=tmp_path)
    ds[2]
    with pytest.raises(UsageError, match="test0003"):
        ds[3]


# -- frame sampling ---------------------------------------------------------------------------------
def test_uniform_and_random_sampling_as_the_reference():
    assert sample_frame_indices(20, 8) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert sample_frame_indices(30, 8, edge=6) == [6, 8, 10, 12, 14, 16, 18, 20]
    assert sample_frame_indices(10, 8, edge=6) == [0, 1, 2, 3, 4, 5, 6, 7]  # too short for edges
    assert sample_frame_indices(3, 8) == [0, 1, 2, 2, 2, 2, 2, 2]
    assert sample_frame_indices(5, None) == [0, 1, 2, 3, 4]
    skips = set()
    rng = random.Random(1)
    for _ in range(200):
        idx = sample_frame_indices(40, 8, "random", rng=rng)
        steps = set(np.diff(idx))
        assert len(idx) == 8 and len(steps) == 1 and idx[0] >= 0 and idx[-1] < 40
        skips |= steps
    assert skips == {1, 2, 3}
    short = sample_frame_indices(4, 8, "random", rng=rng)
    run = sorted(set(short))  # a run with one skip from the start, then its last frame repeated
    assert len(short) == 8 and short == run + [run[-1]] * (8 - len(run)) and run[-1] < 4
    assert len(set(np.diff(run))) <= 1


def test_num_frames_samples_feature_rows(tmp_path):
    write_split(tmp_path, "mrw", "test", 6, frames_of=lambda i: 4 + 10 * i)
    stored = shard_rows(paths.features_dir(tmp_path, "mrw", "test"))
    ds = load_dataset("mrw", split="test", root=tmp_path, num_frames=8)
    for item in ds:
        row = stored[item["id"]]
        full = f16(row["features"], (row["num_frames"], DIM))
        idx = sample_frame_indices(row["num_frames"], 8)
        assert item["features"].shape == (8, DIM) and item["frame_indices"].tolist() == idx
        np.testing.assert_array_equal(item["features"].numpy(), full[idx])
    half = load_dataset("mrw", split="test", root=tmp_path, dtype=torch.float16)
    item = half[5]
    assert item["features"].dtype == torch.float16 and "frame_indices" not in item
    np.testing.assert_array_equal(
        item["features"].numpy(),
        np.frombuffer(stored[item["id"]]["features"], "<f2").reshape(54, DIM),
    )
    item["features"] += 1  # a copy of its own, not a view into the shard's buffer
    assert half[5]["features"].float().sub(item["features"].float()).abs().max() > 0.5
    rand = load_dataset("mrw", split="test", root=tmp_path, num_frames=8, sampling="random")
    random.seed(3)
    starts = {rand[5]["frame_indices"][0].item() for _ in range(30)}
    assert len(starts) > 1
    frames = load_dataset(
        "mrw", split="test", root=tmp_path, num_frames=2, transform=lambda x: x * 2
    )
    np.testing.assert_array_equal(
        frames[1]["features"].numpy(), 2 * f16(stored[frames.ids[1]]["features"], (14, DIM))[[0, 7]]
    )


# -- O(1) access, workers, pickling -------------------------------------------------------------------
def test_getitem_reads_one_row_group(tmp_path, monkeypatch):
    write_split(tmp_path, "mrw", "test", 60, shard_size=30, row_group_size=4)
    ds = load_dataset("mrw", split="test", root=tmp_path)
    reads = []
    original = pq.ParquetFile.read_row_group
    monkeypatch.setattr(
        pq.ParquetFile,
        "read_row_group",
        lambda self, i, *a, **k: reads.append(i) or original(self, i, *a, **k),
    )
    for i in (57, 3, 31):
        assert ds[i]["id"] == f"test{i:04d}"
    assert reads == [(57 - 30) // 4, 3 // 4, (31 - 30) // 4]
    assert ds[-1]["id"] == "test0059"
    with pytest.raises(IndexError):
        ds[60]


def test_dataloader_two_workers_and_collate(tmp_path):
    write_split(tmp_path, "mrw", "train", 30, failed={4})
    ds = load_dataset("mrw", split="train", root=tmp_path, num_frames=4)
    ds[0]  # the parent opens files before forking
    vocab = Vocabulary.from_split("mrw", "train", root=tmp_path)
    loader = DataLoader(
        ds, batch_size=4, num_workers=2, collate_fn=functools.partial(collate_features, vocab=vocab)
    )
    seen = []
    for batch in loader:
        assert batch["features"].shape[1:] == (4, DIM) and batch["tokens"].dtype == torch.long
        for j, item_id in enumerate(batch["id"]):
            np.testing.assert_array_equal(
                batch["features"][j].numpy(), ds[ds.ids.index(item_id)]["features"].numpy()
            )
        seen += batch["id"]
    assert seen == ds.ids
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._files is None and clone[5]["id"] == ds[5]["id"]


def test_info_and_to_pandas(tmp_path):
    write_split(tmp_path, "mrw", "test", 12, failed={0, 1}, modalities=("features", "video"))
    ds = load_dataset("mrw", split="test[2:6]", root=tmp_path)
    info = ds.info
    assert info["num_items"] == 4 and info["dataset"] == "mrw"
    assert info["splits"]["test"]["catalog"] == 12 and info["splits"]["test"]["failed"] == 2
    assert info["splits"]["test"]["available"] == 10 and info["splits"]["test"]["selected"] == 4
    assert "Polysemous" in info["citation"]
    df = ds.to_pandas()
    assert df["id"].tolist() == ds.ids and set(df["split"]) == {"test"}
    stored = shard_rows(paths.features_dir(tmp_path, "mrw", "test"))
    assert df["num_frames"].tolist() == [stored[i]["num_frames"] for i in ds.ids]
    vids = load_dataset("mrw", split="test", root=tmp_path, modality="video").to_pandas()
    assert list(vids["duration"]) == [
        shard_rows(paths.videos_dir(tmp_path, "mrw", "test"))[i]["duration"] for i in vids["id"]
    ]


# -- streaming over workers and ranks ----------------------------------------------
def _epoch_order(root, epoch, world_size=2, num_workers=2, seed=7):
    order = []
    for rank in range(world_size):
        ds = load_dataset(
            "tgif",
            split="train",
            root=root,
            streaming=True,
            seed=seed,
            shuffle_buffer=16,
            rank=rank,
            world_size=world_size,
        )
        ds.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=None, num_workers=num_workers)
        order += [item["id"] for item in loader]
    return order


def test_streaming_each_item_once_per_epoch_seeded_order(tmp_path):
    write_split(tmp_path, "tgif", "train", 90, shard_size=9, failed={11, 50}, row_group_size=3)
    ids = load_dataset("tgif", split="train", root=tmp_path).ids
    first = _epoch_order(tmp_path, 0)
    assert sorted(first) == sorted(ids) and len(first) == len(set(first)) == 88
    again = _epoch_order(tmp_path, 0)
    second = _epoch_order(tmp_path, 1)
    assert again == first  # the same seed and epoch give the same order
    assert sorted(second) == sorted(ids) and second != first
    # unshuffled, one process: the shards in order
    plain = load_dataset("tgif", split="train", root=tmp_path, streaming=True)
    assert isinstance(plain, StreamingSplitDataset)
    assert [item["id"] for item in plain] == ids
    part = load_dataset(
        "tgif", split="train[10:30]", root=tmp_path, streaming=True, rank=1, world_size=2
    )
    other = load_dataset(
        "tgif", split="train[10:30]", root=tmp_path, streaming=True, rank=0, world_size=2
    )
    got = [item["id"] for item in part] + [item["id"] for item in other]
    assert sorted(got) == sorted(ids[10:30]) and len(got) == 20
    with pytest.raises(UsageError):
        load_dataset("tgif", split="train", root=tmp_path, streaming=True, rank=2, world_size=2)


def test_float16_conversion_on_one_thread_equals_torch():
    from mrw.loader.buffers import convert as _convert

    half = torch.randn(40, 2048).half()  # more elements than torch converts without its pool
    threads = torch.get_num_threads()
    for dtype in (torch.float32, torch.float16):
        out = _convert(half, dtype)
        assert out.dtype == dtype and torch.equal(out, half.to(dtype))
        assert out.data_ptr() != half.data_ptr()
    assert torch.equal(_convert(half[:3], torch.float32), half[:3].float())
    assert torch.get_num_threads() == threads  # left as it was


def test_items_never_share_memory_with_later_reads(tmp_path):
    write_split(tmp_path, "mrw", "test", 6, shard_size=6)
    ds = load_dataset(
        "mrw", split="test", root=tmp_path, transform=lambda x: x.sub_(1.0)
    )  # an in-place transform
    stored = shard_rows(paths.features_dir(tmp_path, "mrw", "test"))
    for _ in range(3):  # the row group stays cached: every read must start from the shard again
        for i in (0, 1, 2, 2, 1):
            want = f16(stored[ds.ids[i]]["features"], (3 + i % 9, DIM)) - 1.0
            np.testing.assert_array_equal(ds[i]["features"].numpy(), want)


def test_streaming_takes_rank_and_world_size_from_torch_distributed(tmp_path, monkeypatch):
    write_split(tmp_path, "mrw", "train", 24, shard_size=6, row_group_size=2)
    ids = load_dataset("mrw", split="train", root=tmp_path).ids
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 3)
    seen = []
    for rank in range(3):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        ds = load_dataset("mrw", split="train", root=tmp_path, streaming=True, shuffle_buffer=4)
        part = [item["id"] for item in ds]
        assert 0 < len(part) < len(ids)
        seen += part
    assert sorted(seen) == sorted(ids) and len(seen) == len(ids)


def test_sequential_iteration_equals_indexing_across_row_groups_and_shards(tmp_path):
    """`for item in ds` reads many row groups at once; it must give exactly `ds[i]` for each i,
    whatever the slice, the failed items and the row-group boundaries."""
    write_split(
        tmp_path, "mrw", "test", 70, shard_size=30, failed={3, 31, 32, 69}, row_group_size=4
    )
    for spec in ("test", "test[5:47]", "test[40:]+test[:7]"):
        ds = load_dataset("mrw", split=spec, root=tmp_path)
        seq = list(ds)
        assert [item["id"] for item in seq] == ds.ids
        for i, item in enumerate(seq):
            direct = ds[i]
            assert item["id"] == direct["id"] and item["sentence"] == direct["sentence"]
            assert torch.equal(item["features"], direct["features"])
            assert torch.equal(item["timestamps"], direct["timestamps"])
        stream = load_dataset("mrw", split=spec, root=tmp_path, streaming=True)
        got = {item["id"]: item["features"] for item in stream}
        assert sorted(got) == sorted(ds.ids)
        assert all(torch.equal(got[item["id"]], item["features"]) for item in seq)


def test_sequential_items_own_their_values_across_workers_and_in_place_transforms(tmp_path):
    """Sequential reading converts many rows at once into memory from pyarrow's pool: each item
    must still hold only its own values, survive later reads, and cross a DataLoader worker."""
    write_split(tmp_path, "mrw", "test", 40, shard_size=20, row_group_size=3)
    stored = shard_rows(paths.features_dir(tmp_path, "mrw", "test"))
    ds = load_dataset("mrw", split="test", root=tmp_path, transform=lambda x: x.mul_(2.0))
    kept = list(ds)  # every item kept while later runs are read and converted
    for epoch in range(2):
        for item in kept if epoch == 0 else ds:
            n = stored[item["id"]]["num_frames"]
            want = f16(stored[item["id"]]["features"], (n, DIM)) * 2.0
            np.testing.assert_array_equal(item["features"].numpy(), want)
    stream = load_dataset("mrw", split="test", root=tmp_path, streaming=True)
    got = {}
    for item in DataLoader(stream, batch_size=None, num_workers=2):
        got[item["id"]] = item["features"]
    assert sorted(got) == sorted(ds.ids)
    for item_id, feats in got.items():
        want = f16(stored[item_id]["features"], (stored[item_id]["num_frames"], DIM))
        np.testing.assert_array_equal(feats.numpy(), want)


def test_spare_buffers_come_back_only_when_no_item_holds_them():
    from mrw.loader.buffers import Spare

    spare = Spare(keep=2)
    a = spare.tensor(1000, torch.float32)
    a.fill_(1.0)
    views = torch.split(a, [400, 600])
    del a
    b = spare.tensor(1000, torch.float32)  # `views` still hold the first buffer
    assert b.data_ptr() != views[0].data_ptr() and spare.idle() == 0
    b_ptr = b.data_ptr()
    b_view = b[10:20]
    del b
    assert spare.idle() == 0  # a view of the second one is alive
    del b_view
    assert spare.idle() == 1
    c = spare.tensor(900, torch.float32)  # the second buffer is free again: reused
    assert c.data_ptr() == b_ptr and torch.equal(views[0], torch.ones(400))
    del views
    assert spare.idle() == 1
    d = spare.tensor(1000, torch.float16)
    assert d.dtype == torch.float16 and d.numel() == 1000 and spare.idle() == 0
    del c, d
    assert spare.idle() == 2
    for _ in range(3):
        spare._give_back(np.empty(8, np.uint8))
    assert spare.idle() == 2  # never more than `keep`


def test_a_shard_cut_short_after_opening_is_reported_in_one_line(tmp_path):
    write_split(tmp_path, "mrw", "test", 12, shard_size=12, row_group_size=4)
    ds = load_dataset("mrw", split="test", root=tmp_path)
    shard = sorted(paths.features_dir(tmp_path, "mrw", "test").glob("shard-*.parquet"))[0]
    original = pq.read_table(shard)
    pq.write_table(original.slice(0, 9), shard, row_group_size=3)  # 3 groups of 4 -> 3 of 3
    with pytest.raises(UsageError, match="fewer rows than its metadata says"):
        list(ds)
    pq.write_table(original.slice(0, 6), shard, row_group_size=4)  # 3 groups -> 2
    with pytest.raises(UsageError, match="shards changed after the split was opened"):
        list(ds)
