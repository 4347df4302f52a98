"""The commands that build a split's stages under the root: download, validate,
extract-frames and extract-features."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from mrw.cli.exits import handle_errors
from mrw.cli.options import (
    BoundedInt,
    FiniteFloat,
    common_options,
    distribution_options,
    split_option,
)
from mrw.errors import FatalError, UsageError
from mrw.fetch import MAX_TIMEOUT

if TYPE_CHECKING:
    from mrw.stage import Distribution

SECONDS = FiniteFloat(min=0, max=MAX_TIMEOUT, min_open=True, unit="seconds")


def _distribution(distributor: str, ray_address: str | None, max_shard_retry: int) -> Distribution:
    from mrw.stage import Distribution

    return Distribution(distributor, ray_address, max_shard_retry)


def _with_summary(run: Callable[..., Any], **options: Any) -> Any:
    """Run a stage; when some shards failed, show what the others did before the error."""
    from mrw.stage import ShardsFailed

    try:
        return run(**options)
    except ShardsFailed as e:
        if e.report is not None:
            click.echo(e.report.summary(), err=True)
        raise


# -- download ---------------------------------------------------------------------------------
@click.command()
@common_options
@split_option
@click.option(
    "--metadata",
    "source",
    default=None,
    show_default="the official release URL",
    help="The official release: a folder, a .tar.gz, or a URL.",
)
@click.option("--catalog-only", is_flag=True, help="Build the split's catalog and stop.")
@click.option(
    "--from-dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Take media from local files <id>.<ext> in this folder instead of the network.",
)
@click.option(
    "--limit",
    type=BoundedInt(min=0),
    default=None,
    show_default="all",
    help="Only the first N items of the split.",
)
@click.option(
    "--workers",
    type=BoundedInt(min=1),
    default=16,
    help="Download threads: items fetched at once (see --per-host for one host's share).",
)
@click.option(
    "--processes",
    type=BoundedInt(min=0),
    default=0,
    show_default="0: one per CPU for jobs of 200 items a process or more",
    help="Worker processes sharing --workers and --per-host out among them (1: threads only).",
)
@click.option("--shard-size", type=BoundedInt(min=1), default=1000, help="Items per shard.")
@click.option(
    "--timeout",
    type=SECONDS,
    default=30.0,
    help="Limit on one whole response (name lookup to last byte), in seconds.",
)
@click.option(
    "--retries",
    type=BoundedInt(min=0),
    default=3,
    help="Retries on timeouts, connection errors, 5xx and 429.",
)
@click.option(
    "--max-bytes",
    type=BoundedInt(min=1),
    default=64 * 1024 * 1024,
    help="Largest media file accepted, in bytes.",
)
@click.option(
    "--per-host",
    type=BoundedInt(min=1),
    default=4,
    help="Requests in flight to one host at a time (be polite to the media hosts).",
)
@click.option(
    "--metadata-timeout",
    type=SECONDS,
    default=600.0,
    help="Limit on the whole release download (all tries), in seconds.",
)
@click.option(
    "--metadata-max-bytes",
    type=BoundedInt(min=1),
    default=None,
    show_default="4x the descriptor's size, else 1 GiB",
    help="Largest release download accepted, in bytes.",
)
@click.option(
    "--allow-still",
    is_flag=True,
    help="Keep single-frame files in a video dataset (by default they fail as not_animated).",
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Fetch again the failed items of complete shards; rewrite only the shards that change.",
)
@click.option(
    "--only",
    default=None,
    metavar="CLASSES",
    help="With --retry-failed: only these failure classes, e.g. timeout,http_5xx (x: any digit).",
)
@distribution_options
@handle_errors
def download(
    root: str,
    dataset: str,
    split: str,
    source: str | None,
    catalog_only: bool,
    from_dir: str | None,
    limit: int | None,
    workers: int,
    processes: int,
    shard_size: int,
    timeout: float,
    retries: int,
    max_bytes: int,
    per_host: int,
    metadata_timeout: float,
    metadata_max_bytes: int | None,
    allow_still: bool,
    retry_failed: bool,
    only: str | None,
    distributor: str,
    ray_address: str | None,
    max_shard_retry: int,
) -> None:
    """Build the split's catalog from the official release, then fetch its media into shards."""
    from mrw.download import check_options, download_split, parse_only

    distribution = _distribution(distributor, ray_address, max_shard_retry).check()
    if only is not None and not retry_failed:
        raise UsageError("--only goes with --retry-failed")
    classes = parse_only(only)
    if retry_failed and catalog_only:
        raise UsageError("--retry-failed and --catalog-only exclude each other")
    check_options(workers, shard_size, timeout, retries, max_bytes, limit, per_host, processes)
    if not retry_failed:
        from mrw.releases import build_catalog

        path, report = build_catalog(
            dataset,
            split,
            root=root,
            source=source,
            timeout=metadata_timeout,
            max_bytes=metadata_max_bytes,
        )
        click.echo(report.summary(), err=True)
        click.echo(f"catalog: {path}")
    if catalog_only:
        return

    download_split(
        root=root,
        dataset=dataset,
        split=split,
        from_dir=from_dir,
        limit=limit,
        workers=workers,
        processes=processes,
        shard_size=shard_size,
        timeout=timeout,
        retries=retries,
        max_bytes=max_bytes,
        per_host=per_host,
        allow_still=allow_still,
        distribution=distribution,
        retry_failed=retry_failed,
        only=classes,
    )


# -- validate ---------------------------------------------------------------------------------
@click.command()
@common_options
@split_option
@click.option(
    "--workers",
    type=BoundedInt(min=1),
    default=4,
    help="Threads decoding rows: rows checked at once.",
)
@handle_errors
def validate(root: str, dataset: str, split: str, workers: int) -> None:
    """Re-check the split's video shards: rows decode, checksums match, no duplicates, one status row per item."""
    from mrw.validate import validate_split

    report = validate_split(root=root, dataset=dataset, split=split, workers=workers)
    click.echo(report.format())
    if not report.ok:
        raise FatalError(f"{report.problem_count} problems in {report.stage_dir}")


# -- extract-frames ---------------------------------------------------------------------------
@click.command("extract-frames")
@common_options
@split_option
@click.option(
    "--fps",
    type=FiniteFloat(min=0, min_open=True),
    default=8.0,
    help="Frames per second to keep (every frame of a slower clip).",
)
@click.option(
    "--size",
    type=BoundedInt(min=16, max=4096, unit="pixels"),
    default=256,
    help="Shorter side of the stored frames, in pixels.",
)
@click.option("--quality", type=BoundedInt(min=1, max=100), default=90, help="JPEG quality.")
@click.option(
    "--workers",
    type=BoundedInt(min=1),
    default=None,
    show_default="the CPUs; with --distributor ray: 1",
    help="Threads decoding videos: videos decoded at once (with --distributor ray: per task, "
    "which asks Ray for as many CPUs).",
)
@click.option(
    "--sampling",
    type=click.Choice(["reference", "native"]),
    default="reference",
    help="reference: the frame shown at each 1/fps, as GulpIO's burst made the paper's frames "
    "(slower clips repeat frames); native: the first frame of each 1/fps slot, no repeats.",
)
@distribution_options
@handle_errors
def extract_frames(
    root: str,
    dataset: str,
    split: str,
    fps: float,
    size: int,
    quality: int,
    workers: int | None,
    sampling: str,
    distributor: str,
    ray_address: str | None,
    max_shard_retry: int,
) -> None:
    """Decode each video once into resized JPEG frames, in frame shards (resumable)."""
    from mrw.frames import extract_frames as run

    report = _with_summary(
        run,
        root=root,
        dataset=dataset,
        split=split,
        fps=fps,
        size=size,
        quality=quality,
        workers=workers,
        sampling=sampling,
        distribution=_distribution(distributor, ray_address, max_shard_retry),
    )
    click.echo(report.summary(), err=True)
    click.echo(f"frames: {report.stage_dir}")


# -- extract-features -------------------------------------------------------------------------
@click.command("extract-features")
@common_options
@split_option
@click.option(
    "--backbone",
    type=click.Choice(["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]),
    default="resnet152",
    help="torchvision backbone.",
)
@click.option(
    "--weights",
    default="imagenet",
    help="imagenet (torchvision's original weights), none (seeded random) or a state-dict PATH.",
)
@click.option("--gpu", is_flag=True, help="Run on CUDA with float16 autocast.")
@click.option(
    "--batch-size",
    type=BoundedInt(min=1),
    default=None,
    show_default="32 on CPU, the largest that fits on GPU",
    help="Frames per forward pass.",
)
@click.option(
    "--max-frames",
    type=BoundedInt(min=1),
    default=64,
    help="At most this many frames per video, chosen uniformly.",
)
@click.option(
    "--workers",
    type=BoundedInt(min=0),
    default=None,
    show_default="half the CPUs; CPUs-1 with --gpu",
    help="DataLoader worker processes decoding frames (0: decode in the main process).",
)
@click.option(
    "--cpu-decode",
    is_flag=True,
    help="With --gpu: decode the JPEG frames in the DataLoader workers, not on the GPU.",
)
@distribution_options
@handle_errors
def extract_features(
    root: str,
    dataset: str,
    split: str,
    backbone: str,
    weights: str,
    gpu: bool,
    batch_size: int | None,
    max_frames: int,
    workers: int | None,
    cpu_decode: bool,
    distributor: str,
    ray_address: str | None,
    max_shard_retry: int,
) -> None:
    """Per-frame CNN features (videos) or the 7x7 grid (images) into feature shards (resumable)."""
    from mrw.features import extract_features as run

    report = _with_summary(
        run,
        root=root,
        dataset=dataset,
        split=split,
        backbone=backbone,
        weights=weights,
        gpu=gpu,
        batch_size=batch_size,
        max_frames=max_frames,
        workers=workers,
        distribution=_distribution(distributor, ray_address, max_shard_retry),
        device_decode=gpu and not cpu_decode,
    )
    click.echo(report.summary(), err=True)
    click.echo(f"features: {report.stage_dir}")


COMMANDS = [download, validate, extract_frames, extract_features]
