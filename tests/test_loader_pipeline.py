"""On the real pipeline: the sample release served over HTTP on 127.0.0.1, the
catalog, download, frames and features stages, then load_dataset over what they wrote."""

import io
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from mrw import load_dataset, paths
from mrw.demo import SampleServer, write_sample_release
from mrw.download import download_split
from mrw.features import extract_features
from mrw.frames import extract_frames
from mrw.releases import build_catalog


def _rows(folder):
    out = {}
    for f in sorted(folder.glob("shard-*.parquet")):
        for row in pq.read_table(f).to_pylist():
            out[row["id"]] = row
    return out


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["mrw", "tgif", "coco"])
def test_sample_release_through_every_stage(tmp_path, dataset):
    rel, root = tmp_path / "release", tmp_path / "root"
    if dataset == "coco":  # images from a local COCO folder, one of them missing
        write_sample_release(
            rel, dataset, "http://127.0.0.1:9", counts={"train": 0, "val": 0, "test": 7}, seed=3
        )
        build_catalog(dataset, "test", root=root, source=str(rel))
        first = pq.read_table(paths.catalog_path(root, dataset, "test")).to_pylist()[2]
        (rel / first["filepath"] / first["filename"]).unlink()
        download_split(
            root=root, dataset=dataset, split="test", from_dir=rel, shard_size=3, progress=False
        )
    else:
        with SampleServer(rel) as server:
            write_sample_release(
                rel,
                dataset,
                server.url,
                counts={"train": 0, "val": 0, "test": 7},
                faults=["404"],
                seed=3,
            )
            build_catalog(dataset, "test", root=root, source=str(rel))
            download_split(
                root=root,
                dataset=dataset,
                split="test",
                workers=2,
                shard_size=3,
                timeout=10,
                retries=0,
                progress=False,
            )
    extract_frames(
        root=root, dataset=dataset, split="test", fps=4, size=64, workers=1, progress=False
    )
    extract_features(
        root=root,
        dataset=dataset,
        split="test",
        backbone="resnet18",
        weights="none",
        max_frames=4,
        workers=0,
        progress=False,
    )

    warnings.simplefilter("error")  # a complete pipeline: no "unfinished stage" warning
    catalog = pq.read_table(paths.catalog_path(root, dataset, "test")).to_pylist()
    status = {
        r["id"]: r["status"]
        for r in pq.read_table(paths.videos_dir(root, dataset, "test") / "status").to_pylist()
    }
    expected = [r["id"] for r in catalog if status[r["id"]] == "ok"]
    assert 0 < len(expected) < len(catalog)  # the 404 item is skipped
    by_id = {r["id"]: r for r in catalog}

    videos = load_dataset(dataset, split="test", root=root, modality="video")
    stored = _rows(paths.videos_dir(root, dataset, "test"))
    assert videos.ids == expected
    for item in videos:
        assert item["video"] == stored[item["id"]]["video"]
        assert item["format"] == stored[item["id"]]["format"]
        cat = by_id[item["id"]]
        assert item["sentence"] == cat["sentences"][cat["protocol_sentences"][0]]

    frames = load_dataset(dataset, split="test", root=root, modality="frames")
    stored = _rows(paths.frames_dir(root, dataset, "test"))
    assert frames.ids == [i for i in expected if i in stored]
    for item in frames:
        row = stored[item["id"]]
        want = np.stack(
            [np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in row["frames"]]
        )
        np.testing.assert_array_equal(item["frames"].numpy(), want)

    feats = load_dataset(dataset, split="test", root=root, backbone="resnet18")
    stored = _rows(paths.features_dir(root, dataset, "test", "resnet18"))
    assert feats.ids == [i for i in expected if i in stored] and len(feats) > 0
    for item in feats:
        row = stored[item["id"]]
        pooled = np.frombuffer(row["features"], "<f2").reshape(row["num_frames"], row["dim"])
        if dataset == "coco":
            grid = np.frombuffer(row["grid"], "<f2").reshape(49, row["dim"])
            np.testing.assert_array_equal(item["features"].numpy(), grid.astype(np.float32))
            np.testing.assert_array_equal(item["pooled"].numpy(), pooled[0].astype(np.float32))
        else:
            np.testing.assert_array_equal(item["features"].numpy(), pooled.astype(np.float32))
        assert item["features"].dtype == torch.float32

    half = load_dataset(dataset, split="test[1:3]", root=root, backbone="resnet18")
    assert half.ids == feats.ids[1:3]
