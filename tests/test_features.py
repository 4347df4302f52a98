"""`mrw extract-features`: stored features equal the backbone's own output, resume
after SIGKILL (3), the --gpu path and its error without CUDA (5), weights from the torch cache."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torchvision
from PIL import Image
from test_frames import cli, kill_when_first_shard_lands, read_stage
from test_frames_decode import make_clip, make_jpeg, write_video_stage
from torchvision import transforms

from mrw import paths, shards
from mrw.backbones import imagenet_weights_file
from mrw.features import FEATURES_SCHEMA, IMAGE_FEATURES_SCHEMA, read_features

REFERENCE_TRANSFORM = transforms.Compose(
    [  # the reference's test transform, written out here
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ]
)


def reference_model(name="resnet18", seed=0, state=None):
    """The torchvision backbone with its classifier removed: model(x) is the pooled vector."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None)
    if state is not None:
        model.load_state_dict(state)
    model.fc = torch.nn.Identity()
    return model.eval()


@torch.no_grad()
def direct_features(model, images: list) -> np.ndarray:
    return model(torch.stack([REFERENCE_TRANSFORM(im) for im in images])).numpy()


def assert_close_after_float16(stored: np.ndarray, direct: np.ndarray, tol=1e-3):
    """max |stored - direct| <= tol once direct goes through the same rounding."""
    assert stored.dtype == np.float16 and stored.shape == direct.shape
    diff = np.abs(stored.astype(np.float32) - direct.astype(np.float16).astype(np.float32))
    assert diff.max() <= tol, diff.max()


def pil(jpeg: bytes) -> Image.Image:
    return Image.open(io.BytesIO(jpeg)).convert("RGB")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return {
        "pattern": make_clip(d / "pattern.mp4", "mp4", 24, 1.0),
        "gif": make_clip(d / "moving.gif", "gif", 6, 1.0, size=(160, 120)),
        "green": make_clip(d / "green.mp4", "mp4", 8, 0.5, colour="0x1EB428"),
        "photo": make_jpeg(d / "photo.jpg", "0x1E3CDC", size=(500, 375)),
    }


def features_of(stage_dir: Path) -> dict:
    rows = {}
    for f in shards.data_shards(stage_dir):
        rows.update({r["id"]: r for r in pq.read_table(f).to_pylist()})
    return rows


FAST = ["--backbone", "resnet18", "--weights", "none", "--batch-size", "5", "--workers", "1"]


def test_stored_features_equal_the_backbone_on_stored_frames(root, clips):
    write_video_stage(
        root,
        "mrw",
        "test",
        [
            [("a", clips["pattern"], None), ("b", clips["gif"], None)],
            [("c", clips["green"], None), ("d", None, None)],
        ],
    )
    assert cli("extract-frames", "--root", root, "--split", "test").exit_code == 0
    result = cli("extract-features", "--root", root, "--split", "test", *FAST)
    assert result.exit_code == 0, result.output
    stage = paths.features_dir(root, "mrw", "test", "resnet18")
    assert pq.read_schema(shards.data_path(stage, 0)).equals(FEATURES_SCHEMA)
    stored = features_of(stage)
    frames = features_of(paths.frames_dir(root, "mrw", "test"))
    assert sorted(stored) == ["a", "b", "c"]
    model = reference_model()
    for item_id, row in stored.items():
        assert row["num_frames"] == frames[item_id]["num_frames"]  # under --max-frames 64: all
        assert row["dim"] == 512 and row["timestamps"] == frames[item_id]["timestamps"]
        direct = direct_features(model, [pil(j) for j in frames[item_id]["frames"]])
        assert_close_after_float16(read_features(row), direct)
    # frames are different images, so their features differ: the test above is not vacuous
    a = read_features(stored["a"]).astype(np.float32)
    assert np.abs(a[0] - a[-1]).max() > 1e-2
    status = {r["id"]: r["status"] for r in shards.read_status(stage).to_pylist()}
    assert status == {"a": "ok", "b": "ok", "c": "ok"}  # d never downloaded: no row
    # a video shard that extract-frames has not reached: skipped, and the summary says so
    shards.status_path(paths.frames_dir(root, "mrw", "test"), 1).unlink()
    shards.status_path(stage, 1).unlink()
    again = cli("extract-features", "--root", root, "--split", "test", *FAST)
    assert again.exit_code == 0 and "0 shards written, 1 already complete" in again.output
    assert "1 frames shards are not complete yet" in again.output
    manifest = json.loads((stage / "_stage.json").read_text())
    assert manifest["backbone"] == "resnet18" and manifest["source"] == "frames"
    assert manifest["weights"].startswith("none") and manifest["max_frames"] == 64
    assert manifest["source_settings"]["fps"] == 8.0


def test_from_video_shards_with_max_frames_and_a_broken_video(root, clips):
    broken = b"GIF89a" + bytes(300)
    write_video_stage(
        root, "tgif", "val", [[("p", clips["pattern"], None), ("x", clips["gif"], broken)]]
    )
    result = cli(
        "extract-features",
        "--root",
        root,
        "--dataset",
        "tgif",
        "--split",
        "val",
        *FAST,
        "--max-frames",
        "3",
    )
    assert result.exit_code == 0, result.output
    stage = paths.features_dir(root, "tgif", "val", "resnet18")
    assert json.loads((stage / "_stage.json").read_text())["source"] == "videos"
    status = {r["id"]: r for r in shards.read_status(stage).to_pylist()}
    assert status["p"]["status"] == "ok"
    assert status["x"]["status"] == "failed" and status["x"]["error"].startswith("decode_error")
    row = features_of(stage)["p"]
    # decoded as extract-frames samples by default (reference: 8 frames a second), then 3 of
    # them evenly spread
    from mrw.frames import decode_video
    from mrw.sampling import SPREAD, sample_frame_indices

    video = decode_video(clips["pattern"]["path"].read_bytes(), "mp4", sampling="reference")
    keep = sample_frame_indices(len(video.frames), 3, SPREAD)
    assert row["num_frames"] == 3 and keep[0] == 0 and keep[-1] == len(video.frames) - 1
    assert row["timestamps"] == pytest.approx([video.timestamps[k] for k in keep], abs=1e-6)
    assert np.allclose(np.diff(video.timestamps), 0.125)
    direct = direct_features(reference_model(), [Image.fromarray(video.frames[k]) for k in keep])
    assert_close_after_float16(read_features(row), direct)


def test_coco_images_keep_the_7x7_grid(root, clips):
    write_video_stage(root, "coco", "test", [[("1", clips["photo"], None)]])
    assert (
        cli("extract-frames", "--root", root, "--dataset", "coco", "--split", "test").exit_code == 0
    )
    result = cli("extract-features", "--root", root, "--dataset", "coco", "--split", "test", *FAST)
    assert result.exit_code == 0, result.output
    stage = paths.features_dir(root, "coco", "test", "resnet18")
    assert pq.read_schema(shards.data_path(stage, 0)).equals(IMAGE_FEATURES_SCHEMA)
    row = features_of(stage)["1"]
    assert row["num_frames"] == 1 and row["dim"] == 512
    grid = np.frombuffer(row["grid"], "<f2").reshape(49, 512)
    frame = features_of(paths.frames_dir(root, "coco", "test"))["1"]["frames"][0]
    model = reference_model()
    x = REFERENCE_TRANSFORM(pil(frame)).unsqueeze(0)
    with torch.no_grad():
        body = torch.nn.Sequential(*list(model.children())[:-2])  # up to layer4
        fmap = body(x)[0]  # [512, 7, 7]
    direct_grid = fmap.flatten(1).T.numpy()  # row-major 7x7 -> [49, 512]
    assert_close_after_float16(grid, direct_grid)
    assert_close_after_float16(read_features(row), direct_features(model, [pil(frame)]))


def test_weights_from_a_state_dict_path(tmp_path, root, clips):
    write_video_stage(root, "mrw", "val", [[("a", clips["green"], None)]])
    other = reference_model(seed=7)
    torch.manual_seed(7)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "mine.pt"
    torch.save({"state_dict": state}, path)
    result = cli(
        "extract-features",
        "--root",
        root,
        "--split",
        "val",
        "--backbone",
        "resnet18",
        "--weights",
        path,
        "--batch-size",
        "4",
        "--workers",
        "0",
    )
    assert result.exit_code == 0, result.output
    row = features_of(paths.features_dir(root, "mrw", "val", "resnet18"))["a"]
    from mrw.frames import decode_video

    video = decode_video(clips["green"]["path"].read_bytes(), "mp4", sampling="reference")
    assert_close_after_float16(
        read_features(row), direct_features(other, [Image.fromarray(f) for f in video.frames])
    )


@pytest.mark.parametrize(
    "content,message",
    [
        (b"not a checkpoint", "cannot load --weights"),
        ("resnet34", "does not fit resnet18: missing"),
    ],
)
def test_bad_weights_files_exit_2(tmp_path, root, clips, content, message):
    write_video_stage(root, "mrw", "val", [[("a", clips["green"], None)]])
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save({"layer9.weight": torch.zeros(1)}, path)
    result = cli(
        "extract-features",
        "--root",
        root,
        "--split",
        "val",
        "--backbone",
        "resnet18",
        "--weights",
        path,
    )
    assert result.exit_code == 2 and message in result.output, result.output
    assert not paths.features_dir(root, "mrw", "val", "resnet18").exists()


class _Mirror(BaseHTTPRequestHandler):
    files: ClassVar[dict] = {}

    def do_GET(self):
        body = self.files.get(self.path.rsplit("/", 1)[-1])
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(monkeypatch, tmp_path):
    """A weights mirror on 127.0.0.1, and an empty torch cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Mirror,), {"files": {}}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MRW_WEIGHTS_MIRROR", f"http://127.0.0.1:{server.server_address[1]}/models")
    yield server.RequestHandlerClass.files
    server.shutdown()
    server.server_close()


def test_imagenet_weights_missing_and_not_fetchable_exit_2(root, clips, mirror, tmp_path):
    write_video_stage(root, "mrw", "val", [[("a", clips["green"], None)]])
    result = cli("extract-features", "--root", root, "--split", "val", "--backbone", "resnet18")
    assert result.exit_code == 2
    folder = tmp_path / "torch-home" / "hub" / "checkpoints"
    assert "put resnet18-f37072fd.pth" in result.output and str(folder) in result.output
    assert "Traceback" not in result.output
    assert not list(folder.glob("*")) if folder.exists() else True

    mirror["resnet18-f37072fd.pth"] = b"corrupted download"
    result = cli("extract-features", "--root", root, "--split", "val", "--backbone", "resnet18")
    assert result.exit_code == 2 and "does not match the sha256 prefix f37072fd" in result.output
    assert not (folder / "resnet18-f37072fd.pth").exists()


def test_imagenet_weights_come_from_the_torch_cache(root, clips, mirror):
    write_video_stage(root, "mrw", "val", [[("a", clips["green"], None)]])
    cached = imagenet_weights_file("resnet18")
    assert cached.name == "resnet18-f37072fd.pth"  # torchvision's IMAGENET1K_V1 file
    cached.parent.mkdir(parents=True)
    torch.manual_seed(3)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, cached)
    result = cli(
        "extract-features",
        "--root",
        root,
        "--split",
        "val",
        "--backbone",
        "resnet18",
        "--workers",
        "0",
    )
    assert result.exit_code == 0, result.output
    stage = paths.features_dir(root, "mrw", "val", "resnet18")
    assert "IMAGENET1K_V1" in json.loads((stage / "_stage.json").read_text())["weights"]
    from mrw.frames import decode_video

    video = decode_video(clips["green"]["path"].read_bytes(), "mp4", sampling="reference")
    direct = direct_features(
        reference_model(state=state), [Image.fromarray(f) for f in video.frames]
    )
    assert_close_after_float16(read_features(features_of(stage)["a"]), direct)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is missing")
def test_gpu_without_cuda_exits_2(root, clips):
    write_video_stage(root, "mrw", "val", [[("a", clips["green"], None)]])
    result = cli("extract-features", "--root", root, "--split", "val", "--gpu", *FAST)
    assert result.exit_code == 2
    assert "--gpu was given but CUDA is not available" in result.output
    assert not paths.features_dir(root, "mrw", "val", "resnet18").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_features_match_the_cpu_ones(tmp_path, clips):
    roots = {k: tmp_path / k for k in ("cpu", "gpu")}
    for r in roots.values():
        write_video_stage(r, "coco", "val", [[("1", clips["photo"], None)]])
        write_video_stage(
            r, "mrw", "val", [[("a", clips["pattern"], None), ("b", clips["gif"], None)]]
        )
    for name, r in roots.items():
        extra = ["--gpu"] if name == "gpu" else []
        for ds in ("mrw", "coco"):
            args = [
                "--root",
                r,
                "--dataset",
                ds,
                "--split",
                "val",
                "--backbone",
                "resnet18",
                "--weights",
                "none",
                *extra,
            ]
            result = cli("extract-features", *args)
            assert result.exit_code == 0, result.output
    for ds in ("mrw", "coco"):
        cpu = features_of(paths.features_dir(roots["cpu"], ds, "val", "resnet18"))
        gpu = features_of(paths.features_dir(roots["gpu"], ds, "val", "resnet18"))
        assert sorted(cpu) == sorted(gpu)
        for k in cpu:
            a, b = (
                read_features(cpu[k]).astype(np.float32),
                read_features(gpu[k]).astype(np.float32),
            )
            assert np.abs(a - b).max() <= 0.02 * max(1.0, np.abs(a).max())  # float16 autocast
    manifest = json.loads(
        (paths.features_dir(roots["gpu"], "mrw", "val", "resnet18") / "_stage.json").read_text()
    )
    assert manifest["precision"] == "autocast float16"


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, clips):
    items = [[(f"i{s}", [clips["pattern"], clips["gif"]][s % 2], None)] for s in range(5)]
    roots = {name: tmp_path / name for name in ("whole", "killed")}
    for r in roots.values():
        write_video_stage(r, "mrw", "train", items)
    args = ["extract-features", "--split", "train", *FAST, "--max-frames", "3"]
    assert cli(*args, "--root", roots["whole"]).exit_code == 0
    stage = paths.features_dir(roots["killed"], "mrw", "train", "resnet18")
    kill_when_first_shard_lands([*args, "--root", roots["killed"]], stage, total=5)
    resumed = cli(*args, "--root", roots["killed"])
    assert resumed.exit_code == 0, resumed.output
    assert read_stage(stage) == read_stage(
        paths.features_dir(roots["whole"], "mrw", "train", "resnet18")
    )


def test_bad_options_exit_2(root, clips):
    write_video_stage(root, "mrw", "val", [[("a", clips["green"], None)]])
    for args, message in (
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--max-frames", "0"], "--max-frames must be a positive integer"),
        (["--weights", "/no/such.pt"], "--weights /no/such.pt: no such file"),
    ):
        result = cli(
            "extract-features", "--root", root, "--split", "val", "--backbone", "resnet18", *args
        )
        assert result.exit_code == 2 and message in result.output, result.output
    result = cli("extract-features", "--root", root, "--split", "test", *FAST)
    assert result.exit_code == 2 and "no video shards for mrw/test" in result.output
