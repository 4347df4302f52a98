"""The commands that show what is under the root: info (counts, stages, failures) and
preview (a static site of a split's items and of a submission's results)."""

from __future__ import annotations

import click

from mrw.cli.exits import handle_errors
from mrw.cli.options import SPLIT, BoundedInt, dataset_option, root_option, typed
from mrw.errors import UsageError
from mrw.paths import DATASETS


# -- info -------------------------------------------------------------------------------------
@click.command()
@root_option
@dataset_option(None, "all", "Only this dataset.")
@click.option(
    "--split",
    type=SPLIT,
    default=None,
    metavar="SPLIT",
    show_default="all",
    help="With --failures: only this split (train, val or test).",
)
@click.option(
    "--failures",
    is_flag=True,
    help="What failed, by class and by host, with example ids, and the share of each split "
    "that is usable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def info(root: str, dataset: str | None, split: str | None, failures: bool, as_json: bool) -> None:
    """Datasets, splits, counts, and which stages exist under the root."""
    from mrw.info import collect_failures, collect_info, format_failures, format_info

    names = [dataset] if dataset else list(DATASETS)
    if split is not None and not failures:
        raise UsageError("--split applies to --failures only")
    if failures:
        report, text = collect_failures(root, names, [split] if split else None), format_failures
    else:
        report, text = collect_info(root, names), format_info
    if as_json:
        import json

        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(text(report))


# -- preview ----------------------------------------------------------------------------------
@click.command()
@root_option
@dataset_option(
    "mrw", "mrw; with --preds: the submission's", "Which dataset (with --preds: must be its)."
)
@click.option(
    "--split",
    type=SPLIT,
    default=None,
    metavar="SPLIT",
    show_default="with --preds: the submission's split",
    help="train, val or test; required unless --preds.",
)
@click.option(
    "--out",
    type=click.Path(),
    default=None,
    metavar="DIR",
    show_default="<root>/<dataset>/preview/<split>",
    help="Folder of the site.",
)
@click.option(
    "--limit",
    type=BoundedInt(min=1),
    default=None,
    show_default="all",
    help="Show N items chosen at random (--seed), in catalog order.",
)
@click.option("--seed", type=BoundedInt(min=0), default=0, help="Seeds every random choice.")
@click.option("--failed-only", is_flag=True, help="Show only the items that failed.")
@click.option("--page-size", type=BoundedInt(min=1, max=5000), default=200, help="Items per page.")
@click.option(
    "--preds",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="PREDS.json",
    help="A submission: per shown query its top 5 and the right answer's rank.",
)
@click.option(
    "--queries",
    type=BoundedInt(min=1, max=1000),
    default=10,
    help="With --preds: this many random queries per direction, and as many of the worst-ranked.",
)
@click.option("--plot", is_flag=True, help="With --preds: draw the Recall@K plot into the site.")
@click.option(
    "--allow-missing",
    is_flag=True,
    help="With --preds: as for `mrw evaluate`, rank the submitted items alone.",
)
@click.option(
    "--workers",
    type=BoundedInt(min=1),
    default=None,
    show_default="the CPUs, at most 4",
    help="Threads making strips: strips made at once.",
)
@click.pass_context
@handle_errors
def preview(
    ctx: click.Context,
    root: str,
    dataset: str,
    split: str | None,
    out: str | None,
    limit: int | None,
    seed: int,
    failed_only: bool,
    page_size: int,
    preds: str | None,
    queries: int,
    plot: bool,
    allow_missing: bool,
    workers: int | None,
) -> None:
    """A static site (opens from disk) of the split's items, failures and retrieval results."""
    from mrw.preview import build_preview

    if preds is None and (plot or allow_missing):
        raise UsageError("--plot and --allow-missing need --preds")
    report = build_preview(
        root=root,
        dataset=dataset if (typed(ctx, "dataset") or preds is None) else None,
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


COMMANDS = [info, preview]
