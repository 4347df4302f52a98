"""Frame shards (or video shards, decoded on the fly) -> per-frame CNN features in feature shards.

The reference encoded frames with an ImageNet ResNet-152 on 224x224 center crops of frames whose
shorter side was resized to 256. DataLoader workers decode and crop items while the main process
packs their frames into fixed-size batches for the backbone, so the CNN never waits on JPEG work.
Videos keep one pooled vector per sampled frame; images (COCO) also keep the 7x7 grid.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from mrw import paths, shards
from mrw.backbones import (
    BACKBONES,
    CROP,
    RESIZE,
    ResNetTrunk,
    build_backbone,
    decode_crops,
    device_decodes,
    encode_batch,
    place_trunk,
    preprocess,
)
from mrw.device import choose_device
from mrw.errors import UsageError
from mrw.frames import DecodeError, FrameSettings, decode_jpeg, decode_video, require_videos
from mrw.sampling import SPREAD, sample_frame_indices
from mrw.stage import Distribution, StageReport, complete_shards, run_and_report

IMAGE_DATASETS = ("coco",)

FEATURES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("features", pa.binary()),  # float16 little-endian, row-major [num_frames, dim]
        ("num_frames", pa.int32()),
        ("dim", pa.int32()),
        ("timestamps", pa.list_(pa.float64())),
    ]
)
IMAGE_FEATURES_SCHEMA = FEATURES_SCHEMA.append(pa.field("grid", pa.binary()))  # float16 [49, dim]


class ItemFrames(torch.utils.data.Dataset):
    """One shard's rows -> (position, uint8 crops [n, 3, 224, 224], timestamps, error).

    Holds the shard as an Arrow table, which forked workers share without copying.
    """

    def __init__(
        self,
        table: pa.Table,
        max_frames: int,
        decode: FrameSettings | None,
        scratch_dir: Path | None = None,
        raw: bool = False,
    ):
        self.table = table
        self.max_frames = max_frames
        self.decode = decode  # None: rows hold JPEG frames; else video bytes to decode first
        self.scratch_dir = scratch_dir
        self.raw = raw  # JPEG frames: hand out their bytes, for `decode_crops` on the device

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, pos: int):
        from PIL import Image

        row = self.table.slice(pos, 1).to_pylist()[0]
        try:
            if self.decode is None and self.raw:
                keep = sample_frame_indices(len(row["frames"]), self.max_frames, SPREAD)
                if not keep:
                    raise DecodeError("no frames")
                jpegs = [
                    torch.frombuffer(bytearray(row["frames"][k]), dtype=torch.uint8) for k in keep
                ]
                return pos, jpegs, [row["timestamps"][k] for k in keep], None
            if self.decode is None:
                keep = sample_frame_indices(len(row["frames"]), self.max_frames, SPREAD)
                images = [Image.fromarray(decode_jpeg(row["frames"][k])) for k in keep]
                stamps = [row["timestamps"][k] for k in keep]
            else:
                video = decode_video(
                    row["video"],
                    row.get("format"),
                    self.decode.fps,
                    self.decode.size,
                    self.scratch_dir,
                    sampling=self.decode.sampling,
                )
                keep = sample_frame_indices(len(video.frames), self.max_frames, SPREAD)
                images = [Image.fromarray(video.frames[k]) for k in keep]
                stamps = [video.timestamps[k] for k in keep]
            if not images:
                raise DecodeError("no frames")
            crops = torch.stack([preprocess(im) for im in images])
        except (DecodeError, OSError, ValueError) as e:
            return pos, None, [], f"decode_error: {e}"
        return pos, crops, stamps, None


class FeatureRunner:
    """Packs items' frames into fixed-size batches and runs the trunk; CPU or CUDA."""

    def __init__(
        self,
        trunk: ResNetTrunk,
        device: torch.device,
        batch_size: int,
        grid: bool,
        device_decode: bool = False,
    ):
        self.device = device
        self.cuda = device.type == "cuda"
        self.grid = grid
        self.dim = trunk.dim
        self.trunk = trunk
        self.batch_size = batch_size
        self.device_decode = device_decode  # items come as JPEG bytes, decoded on the device
        # two staging buffers: fill one while the GPU still reads the other; pinned host memory,
        # or on the device itself when the crops are made there
        self.buffers = [
            torch.empty((batch_size, 3, CROP, CROP), dtype=torch.uint8, device=device)
            if device_decode
            else torch.empty((batch_size, 3, CROP, CROP), dtype=torch.uint8, pin_memory=self.cuda)
            for _ in range(2 if self.cuda else 1)
        ]
        # and two pinned buffers for the results: a copy into pageable memory would make the
        # host wait for the GPU, so that filling the next batch could not overlap the forward
        self.results = (
            [
                (
                    torch.empty((batch_size, self.dim), dtype=torch.float16, pin_memory=True),
                    torch.empty((batch_size, 49, self.dim), dtype=torch.float16, pin_memory=True)
                    if grid
                    else None,
                )
                for _ in range(2)
            ]
            if self.cuda
            else []
        )

    def run(self, loader: Iterable, outputs: dict) -> list[tuple[int, str]]:
        """Fill `outputs[pos] = (pooled, grid, stamps)` for every item; returns the failures."""
        failures: list[tuple[int, str]] = []
        fill, turn = 0, 0
        spans: list[tuple[int, int, int, int]] = []  # (pos, first frame, count, buffer offset)
        pending = None

        def launch():
            nonlocal fill, turn, spans, pending
            # CUDA: a shard's last, partial batch is rounded up to a power of two (rows past
            # `fill` are stale and ignored), so cuDNN tunes a few shapes, not one per shard
            rows = min(self.batch_size, 1 << (fill - 1).bit_length()) if self.cuda else fill
            x = self.buffers[turn][:rows].to(self.device, non_blocking=True)
            pooled, grid = encode_batch(self.trunk, x, self.grid)
            if self.cuda:
                host_pooled, host_grid = self.results[turn]
                pooled = host_pooled[:rows].copy_(pooled, non_blocking=True)
                if grid is not None and host_grid is not None:
                    grid = host_grid[:rows].copy_(grid, non_blocking=True)
                done = torch.cuda.Event()
                done.record()
            else:
                done = None
            finish(pending)
            pending = (done, pooled, grid, spans)
            fill, spans = 0, []
            turn = (turn + 1) % len(self.buffers)

        def finish(batch):
            if batch is None:
                return
            done, pooled, grid, batch_spans = batch
            if done is not None:
                done.synchronize()
            for pos, first, count, off in batch_spans:
                outputs[pos][0][first : first + count] = pooled[off : off + count].numpy()
                if grid is not None:
                    outputs[pos][1][first : first + count] = grid[off : off + count].numpy()

        for pos, crops, stamps, error in loader:
            if error is None and isinstance(crops, list):
                try:
                    crops = decode_crops(crops, self.device)
                except (RuntimeError, ValueError) as e:
                    error = f"decode_error: {str(e).splitlines()[0][:200]}"
            if error is not None:
                failures.append((pos, error))
                continue
            n = crops.shape[0]
            outputs[pos] = (
                np.empty((n, self.dim), np.float16),
                np.empty((n, 49, self.dim), np.float16) if self.grid else None,
                stamps,
            )
            first = 0
            while first < n:
                take = min(self.batch_size - fill, n - first)
                self.buffers[turn][fill : fill + take].copy_(crops[first : first + take])
                spans.append((pos, first, take, fill))
                fill += take
                first += take
                if fill == self.batch_size:
                    launch()
        if fill:
            launch()
        finish(pending)
        return failures


def largest_batch(
    trunk: ResNetTrunk,
    device: torch.device,
    grid: bool,
    candidates: tuple[int, ...] = (1024, 512, 256, 128, 64, 32, 16, 8),
) -> int:
    """The largest batch (of `candidates`) whose forward pass fits in the GPU's memory."""
    for size in candidates:
        try:
            x = torch.zeros((size, 3, CROP, CROP), dtype=torch.uint8, device=device)
            encode_batch(trunk, x, grid)
            torch.cuda.synchronize(device)
            return size
        except torch.cuda.OutOfMemoryError:
            x = None
            torch.cuda.empty_cache()
    raise UsageError("not even a batch of 8 frames fits in the GPU's memory")


# -- the stage --------------------------------------------------------------------------------
@dataclass
class FeaturesReport(StageReport):
    source: str = "frames"
    batch_size: int = 0
    device: str = "cpu"

    def summary(self) -> str:
        text = (
            self.counts("features", "items")
            + f", from {self.source}, {self.device}, batch {self.batch_size})"
        )
        if self.shards_waiting:
            text += (
                f"; {self.shards_waiting} {self.source} shards are not complete yet "
                "(finish that stage, then run this again)"
            )
        return text


def _pick_source(root: paths.Root, dataset: str, split: str) -> tuple[str, Path, dict]:
    """Frame shards when `extract-frames` ran, else the video shards, decoded here."""
    frames_dir = paths.frames_dir(root, dataset, split)
    manifest = shards.read_manifest(frames_dir)
    if manifest is not None and shards.status_shards(frames_dir):
        return "frames", frames_dir, manifest
    videos_dir = require_videos(root, dataset, split)
    decode = FrameSettings()
    return (
        "videos",
        videos_dir,
        {
            "fps": decode.fps,
            "size": decode.size,
            "sampling": decode.sampling,
            "shard_size": (shards.read_manifest(videos_dir) or {}).get("shard_size"),
        },
    )


def _source_shard(source: str, source_dir: Path, index: int) -> tuple[pa.Table, dict]:
    """A source shard's rows (only the columns needed) and the URL of each id from its status."""
    status = shards.read_parquet(shards.status_path(source_dir, index), columns=["id", "url"])
    urls = dict(zip(status.column("id").to_pylist(), status.column("url").to_pylist()))
    columns = ["id", "frames", "timestamps"] if source == "frames" else ["id", "video", "format"]
    data_file = shards.data_path(source_dir, index)
    if not data_file.exists():
        return pa.table({c: pa.array([], pa.string()) for c in columns}), urls
    return shards.read_parquet(data_file, columns=columns), urls


def default_workers(gpu: bool) -> int:
    cpus = os.cpu_count() or 1
    return max(1, min(16, cpus - 1)) if gpu else max(1, cpus // 2)


@dataclass
class _FeaturesContext:
    runner: FeatureRunner
    threads: int

    def close(self) -> None:
        torch.set_num_threads(self.threads)


@dataclass(frozen=True)
class FeaturesStage:
    """Feature shard `i` from source shard `i` (frames, or videos decoded on the fly)."""

    source: str
    source_dir: Path
    stage_dir: Path
    backbone: str
    weights: str
    gpu: bool
    batch_size: int | None
    max_frames: int
    workers: int
    decode: FrameSettings | None  # None: the source holds JPEG frames
    images: bool
    device_decode: bool  # JPEG frames decoded by `decode_crops` on the device, if it can
    local_shards: int = 1
    num_cpus: float = 1.0
    actor_gpus: float | None = None
    #: the driver's trunk, already placed, and its batch size (never shipped to Ray workers)
    preloaded: tuple | None = field(default=None, compare=False, hash=False, repr=False)

    def __reduce__(self):
        values = [None if f.name == "preloaded" else getattr(self, f.name) for f in fields(self)]
        return (type(self), tuple(values))

    def open(self) -> _FeaturesContext:
        device = torch.device("cuda" if self.gpu else "cpu")
        if self.preloaded is not None:
            trunk, batch_size = self.preloaded
        else:
            trunk, batch_size = _place(self, build_backbone(self.backbone, self.weights)[0])
        threads = torch.get_num_threads()
        if self.gpu:  # the CPUs belong to the DataLoader workers: idle OpenMP threads would spin
            torch.set_num_threads(1)
        on_device = self.device_decode and self.source == "frames" and device_decodes(device)
        return _FeaturesContext(
            FeatureRunner(trunk, device, batch_size, self.images, on_device), threads
        )

    def run_shard(self, context: _FeaturesContext, index: int) -> None:
        runner = context.runner
        table, urls = _source_shard(self.source, self.source_dir, index)
        parallel = self.workers if table.num_rows > 1 else 0
        loader = torch.utils.data.DataLoader(
            ItemFrames(table, self.max_frames, self.decode, self.stage_dir, runner.device_decode),
            batch_size=None,
            shuffle=False,
            num_workers=parallel,
            prefetch_factor=4 if parallel else None,
        )
        outputs: dict = {}
        failures = dict(runner.run(loader, outputs))
        rows, status = [], []
        for pos, item_id in enumerate(table.column("id").to_pylist()):
            st = {"id": item_id, "url": urls.get(item_id), "attempts": 1}
            if pos in failures:
                status.append({**st, "status": "failed", "error": failures[pos]})
                continue
            pooled, grid, stamps = outputs[pos]
            row = {
                "id": item_id,
                "features": pooled.astype("<f2").tobytes(),
                "num_frames": pooled.shape[0],
                "dim": pooled.shape[1],
                "timestamps": [float(t) for t in stamps],
            }
            if self.images:
                row["grid"] = grid[0].astype("<f2").tobytes()
            rows.append(row)
            status.append({**st, "status": "ok", "error": None})
        schema = IMAGE_FEATURES_SCHEMA if self.images else FEATURES_SCHEMA
        out = pa.Table.from_pylist(rows, schema=schema) if rows else None
        shards.write_shard(self.stage_dir, index, out, status)


def _place(stage: FeaturesStage, trunk: ResNetTrunk) -> tuple[ResNetTrunk, int]:
    """The trunk on the stage's device and the batch size to run it with."""
    device = torch.device("cuda" if stage.gpu else "cpu")
    trunk = place_trunk(trunk, device)
    batch_size = stage.batch_size
    if stage.gpu:
        torch.backends.cudnn.benchmark = True
        batch_size = batch_size or largest_batch(trunk, device, stage.images)
    return trunk, batch_size or 32


@shards.holds_stage_lock(
    lambda a: paths.features_dir(a["root"], a["dataset"], a["split"], a["backbone"])
)
def extract_features(
    root: paths.Root = None,
    dataset: str = "mrw",
    split: str = "test",
    backbone: str = "resnet152",
    weights: str = "imagenet",
    gpu: bool = False,
    batch_size: int | None = None,
    max_frames: int = 64,
    workers: int | None = None,
    progress: bool = True,
    distribution: Distribution | None = None,
    device_decode: bool | None = None,
) -> FeaturesReport:
    """Every complete source shard without a complete feature shard -> a feature shard.

    `device_decode` (default: on with `gpu`) decodes JPEG frames on the device in batches instead
    of in the DataLoader workers; where the device cannot, the workers do it as before. With
    `gpu` on Ray, one actor per GPU loads the backbone once and takes shards one after another.
    """
    dataset = paths.check_dataset(dataset)
    split = paths.normalize_split(split)
    distribution = (distribution or Distribution()).check()
    on_ray = distribution.distributor == "ray"
    if backbone not in BACKBONES:
        raise UsageError(f"unknown --backbone {backbone!r}: expected one of {', '.join(BACKBONES)}")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer, got {batch_size}")
    if max_frames < 1:
        raise UsageError(f"--max-frames must be a positive integer, got {max_frames}")
    workers = default_workers(gpu) if workers is None else int(workers)
    if workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {workers}")
    # on Ray the GPUs are the workers'; the driver may have none
    device = torch.device("cuda") if gpu and on_ray else choose_device(gpu)
    images = dataset in IMAGE_DATASETS

    source, source_dir, source_settings = _pick_source(root, dataset, split)
    stage_dir = paths.stage_dir(root, dataset, split, "features", backbone)
    trunk, described = build_backbone(backbone, weights)
    shards.check_manifest(
        stage_dir,
        {
            "stage": "features",
            "backbone": backbone,
            "weights": described,
            "dim": trunk.dim,
            "source": source,
            "source_settings": source_settings,
            "max_frames": max_frames,
            "transform": f"resize {RESIZE}, center crop {CROP}, ImageNet mean/std",
            "precision": "autocast float16" if gpu else "float32",
            "stored": "float16",
            "grid": images,
            "shard_size": source_settings.get("shard_size"),
        },
    )
    shards.remove_temporaries(stage_dir)

    stage = FeaturesStage(
        source=source,
        source_dir=source_dir,
        stage_dir=stage_dir,
        backbone=backbone,
        weights=weights,
        gpu=gpu,
        batch_size=batch_size,
        max_frames=max_frames,
        workers=workers,
        decode=None
        if source == "frames"
        else FrameSettings(
            source_settings["fps"],
            source_settings["size"],
            sampling=source_settings.get("sampling", "native"),
        ),
        images=images,
        device_decode=gpu if device_decode is None else bool(device_decode),
        num_cpus=float(max(1, workers)),
        actor_gpus=(1.0 if gpu else None) if on_ray else None,
    )
    if not on_ray:  # the backbone built for the manifest is the one that runs
        stage = replace(stage, preloaded=_place(stage, trunk))
    indices, waiting = complete_shards(source_dir)
    if source == "frames":  # video shards that extract-frames has not reached yet
        waiting |= set(complete_shards(paths.videos_dir(root, dataset, split))[0]) - set(indices)
    report = FeaturesReport(
        stage_dir=stage_dir,
        source=source,
        batch_size=stage.preloaded[1] if stage.preloaded else (batch_size or 0),
        device=str(device),
        shards_total=len(indices),
        shards_waiting=len(waiting),
    )
    return run_and_report(stage, indices, report, distribution, "extract-features", progress)


def read_features(row: dict) -> np.ndarray:
    """A feature-shard row's `features` as float16 [num_frames, dim]."""
    return np.frombuffer(row["features"], "<f2").reshape(row["num_frames"], row["dim"])
