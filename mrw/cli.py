"""The `mrw` command line: parses options and calls one function per command.

Exit codes (interfaces.md, section 1): 0 success, 1 runtime failure, 2 bad usage or bad input.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import sys

import click

from mrw.errors import FatalError, UsageError
from mrw.paths import DATASETS


def _fail(code: int, message: str):
    _close_progress_bars()
    click.echo(f"mrw: error: {message}", err=True)
    sys.exit(code)


def _close_progress_bars() -> None:
    """End any progress bar a failed stage left open, so the error starts a line of its own."""
    module = sys.modules.get("tqdm")
    if module is None:
        return
    for bar in list(getattr(module.tqdm, "_instances", ())):
        with contextlib.suppress(Exception):  # the message matters more than the bar
            bar.close()


def disk_full(error: BaseException | None) -> OSError | None:
    """The ENOSPC error in `error` or in what caused it, else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and (
            error.errno == errno.ENOSPC or "No space left on device" in str(error)
        ):
            return error
        error = error.__cause__ or error.__context__
    return None


def _disk_full_line(error: OSError) -> str:
    if error.filename is not None:
        where = f"the device holding {error.filename}"
    else:  # pyarrow and plain writes do not say which file
        import tempfile

        from mrw.paths import resolve_root

        ctx = click.get_current_context(silent=True)
        root = resolve_root(ctx.params.get("root") if ctx else None)
        where = f"device (under {root} or the scratch folder {tempfile.gettempdir()})"
    return (
        f"no space left on {where}: free some space and rerun "
        "(finished shards are kept, nothing half-written is)"
    )


def handle_errors(fn):
    """Turn the package's errors into one line on stderr and the right exit code; a full disk,
    wherever it struck, is one `no space left on ...` line and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UsageError as e:
            _fail(2, str(e))
        except FatalError as e:
            full = disk_full(e)
            _fail(1, _disk_full_line(full) if full else str(e))
        except KeyboardInterrupt:
            _fail(1, "interrupted")
        except Exception as e:
            full = disk_full(e)
            if full is None:
                raise
            _fail(1, _disk_full_line(full))

    return wrapper


def common_options(fn):
    fn = click.option(
        "--dataset",
        type=click.Choice(DATASETS),
        default="mrw",
        show_default=True,
        help="Which dataset.",
    )(fn)
    fn = click.option(
        "--root",
        type=click.Path(file_okay=False),
        default=None,
        help="Data root (default: $MRW_HOME, else ~/.cache/mrw).",
    )(fn)
    return fn


def split_option(fn):
    return click.option(
        "--split", required=True, help="train, val or test (`valid` is accepted for val)."
    )(fn)


def distribution_options(fn):
    """`--distributor`, `--ray-address`, `--max-shard-retry`: where a stage's shards run."""
    fn = click.option(
        "--max-shard-retry",
        type=click.IntRange(min=0),
        default=2,
        show_default=True,
        help="Tries after the first for a shard whose task fails or dies.",
    )(fn)
    fn = click.option(
        "--ray-address",
        default=None,
        help="The Ray cluster to run on (default: auto when RAY_ADDRESS is set, "
        "else a local Ray started for this run).",
    )(fn)
    fn = click.option(
        "--distributor",
        type=click.Choice(["local", "ray"]),
        default="local",
        show_default=True,
        help="Run the shards in this process (local) or as tasks on a Ray cluster (ray).",
    )(fn)
    return fn


def _distribution(distributor, ray_address, max_shard_retry):
    from mrw.stage import Distribution

    return Distribution(distributor, ray_address, max_shard_retry)


def _with_summary(run, **options):
    """Run a stage; when some shards failed, show what the others did before the error."""
    from mrw.stage import ShardsFailed

    try:
        return run(**options)
    except ShardsFailed as e:
        if e.report is not None:
            click.echo(e.report.summary(), err=True)
        raise


class _Group(click.Group):
    def main(self, *args, **kwargs):
        # click's own usage errors exit 2 already; keep them to one line plus a hint
        return super().main(*args, **kwargs)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mrw")
def main():
    """Datasets and the standard benchmark for cross-modal retrieval on MRW, TGIF and MS-COCO."""


# -- info -------------------------------------------------------------------------------------
@main.command()
@click.option(
    "--root",
    type=click.Path(file_okay=False),
    default=None,
    help="Data root (default: $MRW_HOME, else ~/.cache/mrw).",
)
@click.option(
    "--dataset", type=click.Choice(DATASETS), default=None, help="Only this dataset (default: all)."
)
@click.option(
    "--split",
    default=None,
    help="With --failures: only this split (train, val or test; default: all).",
)
@click.option(
    "--failures",
    is_flag=True,
    help="What failed, by class and by host, with example ids, and the share of each split "
    "that is usable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def info(root, dataset, split, failures, as_json):
    """Datasets, splits, counts, and which stages exist under the root."""
    from mrw.info import collect_failures, collect_info, format_failures, format_info

    names = [dataset] if dataset else list(DATASETS)
    if split is not None and not failures:
        raise UsageError("--split applies to --failures only")
    if failures:
        report = collect_failures(root, names, [split] if split else None)
        text = format_failures
    else:
        report, text = collect_info(root, names), format_info
    if as_json:
        import json

        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(text(report))


# -- download ---------------------------------------------------------------------------------
@main.command()
@common_options
@split_option
@click.option(
    "--metadata",
    "source",
    default=None,
    help="The official release: a folder, a .tar.gz, or a URL (default: the official URL).",
)
@click.option("--catalog-only", is_flag=True, help="Build the split's catalog and stop.")
@click.option(
    "--from-dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Take media from local files <id>.<ext> in this folder instead of the network.",
)
@click.option("--limit", type=int, default=None, help="Only the first N items of the split.")
@click.option("--workers", type=int, default=16, show_default=True, help="Download threads.")
@click.option("--shard-size", type=int, default=1000, show_default=True, help="Items per shard.")
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Limit on one whole response (connect to last byte), in seconds.",
)
@click.option(
    "--retries",
    type=int,
    default=3,
    show_default=True,
    help="Retries on timeouts, connection errors, 5xx and 429.",
)
@click.option(
    "--max-bytes",
    type=int,
    default=64 * 1024 * 1024,
    show_default=True,
    help="Largest media file accepted, in bytes.",
)
@click.option(
    "--per-host",
    type=int,
    default=4,
    show_default=True,
    help="Requests in flight to one host at a time (be polite to the media hosts).",
)
@click.option(
    "--metadata-timeout",
    type=float,
    default=600.0,
    show_default=True,
    help="Limit on the whole release download (all tries), in seconds.",
)
@click.option(
    "--metadata-max-bytes",
    type=int,
    default=None,
    help="Largest release download accepted, in bytes (default: 4x the descriptor's size, "
    "else 1 GiB).",
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
    root,
    dataset,
    split,
    source,
    catalog_only,
    from_dir,
    limit,
    workers,
    shard_size,
    timeout,
    retries,
    max_bytes,
    per_host,
    metadata_timeout,
    metadata_max_bytes,
    allow_still,
    retry_failed,
    only,
    distributor,
    ray_address,
    max_shard_retry,
):
    """Build the split's catalog from the official release, then fetch its media into shards."""
    from mrw.download import check_options, download_split, parse_only
    from mrw.fetch import timeout_problem

    distribution = _distribution(distributor, ray_address, max_shard_retry).check()
    if only is not None and not retry_failed:
        raise UsageError("--only goes with --retry-failed")
    classes = parse_only(only)
    if retry_failed and catalog_only:
        raise UsageError("--retry-failed and --catalog-only exclude each other")
    check_options(workers, shard_size, timeout, retries, max_bytes, limit, per_host)
    problem = timeout_problem(metadata_timeout)
    if problem:
        raise UsageError(f"--metadata-timeout: {problem}")
    if metadata_max_bytes is not None and metadata_max_bytes < 1:
        raise UsageError(
            f"--metadata-max-bytes must be a positive integer, got {metadata_max_bytes}"
        )
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


# -- commands added by later stages go below, one block each -----------------------------------


# -- validate ---------------------------------------------------------------------------------
@main.command()
@common_options
@split_option
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Rows decoded at once.",
)
@handle_errors
def validate(root, dataset, split, workers):
    """Re-check the split's video shards: rows decode, checksums match, no duplicates, one status row per item."""
    from mrw.validate import validate_split

    report = validate_split(root=root, dataset=dataset, split=split, workers=workers)
    click.echo(report.format())
    if not report.ok:
        raise FatalError(f"{report.problem_count} problems in {report.stage_dir}")


# -- extract-frames ---------------------------------------------------------------------------
@main.command("extract-frames")
@common_options
@split_option
@click.option(
    "--fps",
    type=float,
    default=8.0,
    show_default=True,
    help="Frames per second to keep (every frame of a slower clip).",
)
@click.option(
    "--size",
    type=int,
    default=256,
    show_default=True,
    help="Shorter side of the stored frames, in pixels.",
)
@click.option("--quality", type=int, default=90, show_default=True, help="JPEG quality, 1-100.")
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Videos decoded at once (default: the CPUs; with --distributor ray: 1 per task).",
)
@click.option(
    "--sampling",
    type=click.Choice(["reference", "native"]),
    default="reference",
    show_default=True,
    help="reference: the frame shown at each 1/fps, as GulpIO's burst made the paper's frames "
    "(slower clips repeat frames); native: the first frame of each 1/fps slot, no repeats.",
)
@distribution_options
@handle_errors
def extract_frames(
    root,
    dataset,
    split,
    fps,
    size,
    quality,
    workers,
    sampling,
    distributor,
    ray_address,
    max_shard_retry,
):
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
@main.command("extract-features")
@common_options
@split_option
@click.option(
    "--backbone",
    type=click.Choice(["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]),
    default="resnet152",
    show_default=True,
    help="torchvision backbone.",
)
@click.option(
    "--weights",
    default="imagenet",
    show_default=True,
    help="imagenet (torchvision's original weights), none (seeded random) or a state-dict PATH.",
)
@click.option("--gpu", is_flag=True, help="Run on CUDA with float16 autocast.")
@click.option(
    "--batch-size",
    type=int,
    default=None,
    help="Frames per forward pass (default: 32 on CPU, the largest that fits on GPU).",
)
@click.option(
    "--max-frames",
    type=int,
    default=64,
    show_default=True,
    help="At most this many frames per video, chosen uniformly.",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="DataLoader workers decoding frames (default: half the CPUs; CPUs-1 with --gpu).",
)
@click.option(
    "--cpu-decode",
    is_flag=True,
    help="With --gpu: decode the JPEG frames in the DataLoader workers, not on the GPU.",
)
@distribution_options
@handle_errors
def extract_features(
    root,
    dataset,
    split,
    backbone,
    weights,
    gpu,
    batch_size,
    max_frames,
    workers,
    cpu_decode,
    distributor,
    ray_address,
    max_shard_retry,
):
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


# -- evaluate ---------------------------------------------------------------------------------
@main.command()
@common_options
@click.argument("preds")
@click.option(
    "--json", "json_out", default=None, metavar="OUT", help="Write the results JSON here."
)
@click.option(
    "--leaderboard", is_flag=True, help="Rank the submission by rsum among the published results."
)
@click.option(
    "--plot",
    default=None,
    metavar="OUT.png",
    help="Recall@K curves of both directions, with the published points.",
)
@click.option("--gpu", is_flag=True, help="Score embeddings on CUDA (exit 2 if none).")
@click.option(
    "--all-sentences",
    is_flag=True,
    help="Evaluate on every sentence of the split, not only the protocol's.",
)
@click.option(
    "--allow-missing",
    is_flag=True,
    help="Evaluate the submitted items alone when some of the split's are missing "
    "(items the pipeline failed on are left out without it).",
)
@handle_errors
def evaluate(root, dataset, preds, json_out, leaderboard, plot, gpu, all_sentences, allow_missing):
    """The standard retrieval evaluation of PREDS (a preds.json; dataset and split inside)."""
    from mrw.evaluation import run_evaluate

    # the submission names its dataset; --dataset, when typed, must agree with it
    typed = click.get_current_context().get_parameter_source("dataset").name != "DEFAULT"
    run_evaluate(
        preds,
        root=root,
        dataset=dataset if typed else None,
        json_out=json_out,
        leaderboard=leaderboard,
        plot=plot,
        gpu=gpu,
        all_sentences=all_sentences,
        allow_missing=allow_missing,
        echo=click.echo,
    )


# -- build-vocab ------------------------------------------------------------------------------
@main.command("build-vocab")
@common_options
@click.option(
    "--split", default="train", show_default=True, help="The split whose sentences count."
)
@click.option(
    "--out",
    default=None,
    metavar="FILE.json",
    help="Where to write it (default: <root>/<dataset>/vocab-<split>.json).",
)
@click.option(
    "--min-count",
    type=int,
    default=1,
    show_default=True,
    help="Keep words seen at least this many times.",
)
@click.option(
    "--protocol-only",
    is_flag=True,
    help="Count only the protocol's sentences, not every sentence of the split.",
)
@click.option(
    "--reference",
    is_flag=True,
    help="The reference code's vocabulary: every split's sentences, words in the order they "
    "first occur, its MRW rewrites (default out: <root>/<dataset>/vocab-reference.json).",
)
@click.pass_context
@handle_errors
def build_vocab(ctx, root, dataset, split, out, min_count, protocol_only, reference):
    """The vocabulary of a split's sentences (Treebank tokens, lower-cased) as JSON."""
    from mrw.text import build_vocabulary

    if reference and ctx.get_parameter_source("split") != click.core.ParameterSource.DEFAULT:
        raise UsageError("--reference counts every split: drop --split")
    path, vocab = build_vocabulary(
        root=root,
        dataset=dataset,
        split=split,
        out=out,
        min_count=min_count,
        all_sentences=not protocol_only,
        reference=reference,
    )
    click.echo(f"vocabulary: {len(vocab)} entries -> {path}")


# -- preview ----------------------------------------------------------------------------------
@main.command()
@common_options
@click.option(
    "--split",
    default=None,
    help="train, val or test (default with --preds: the submission's split).",
)
@click.option(
    "--out",
    type=click.Path(),
    default=None,
    metavar="DIR",
    help="Folder of the site (default: <root>/<dataset>/preview/<split>).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Show N items chosen at random (--seed), in catalog order (default: all).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seeds every random choice.",
)
@click.option("--failed-only", is_flag=True, help="Show only the items that failed.")
@click.option(
    "--page-size",
    type=click.IntRange(min=1, max=5000),
    default=200,
    show_default=True,
    help="Items per page.",
)
@click.option(
    "--preds",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="PREDS.json",
    help="A submission: per shown query its top 5 and the right answer's rank.",
)
@click.option(
    "--queries",
    type=click.IntRange(min=1, max=1000),
    default=10,
    show_default=True,
    help="With --preds: this many random queries per direction, and as many of the worst-ranked.",
)
@click.option("--plot", is_flag=True, help="With --preds: draw the Recall@K plot into the site.")
@click.option(
    "--allow-missing",
    is_flag=True,
    help="With --preds: as for `mrw evaluate`, rank the submitted items alone.",
)
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Strips made at once.")
@handle_errors
def preview(
    root,
    dataset,
    split,
    out,
    limit,
    seed,
    failed_only,
    page_size,
    preds,
    queries,
    plot,
    allow_missing,
    workers,
):
    """A static site (opens from disk) of the split's items, failures and retrieval results."""
    from mrw.preview import build_preview

    if preds is None and (plot or allow_missing):
        raise UsageError("--plot and --allow-missing need --preds")
    typed = click.get_current_context().get_parameter_source("dataset").name != "DEFAULT"
    report = build_preview(
        root=root,
        dataset=dataset if (typed or preds is None) else None,
        split=split,
        out=out,
        limit=limit,
        seed=seed,
        failed_only=failed_only,
        page_size=page_size,
        preds=preds,
        queries=queries,
        plot=plot,
        allow_missing=allow_missing,
        workers=workers,
        progress=True,
        echo=lambda s: click.echo(s, err=True),
    )
    click.echo(f"preview: {report.out / 'index.html'}")


if __name__ == "__main__":
    main()
