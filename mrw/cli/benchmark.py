"""The benchmark's commands: build-vocab (the text side's vocabulary) and evaluate (a
submission through the standard protocol)."""

from __future__ import annotations

import click

from mrw.cli.exits import handle_errors
from mrw.cli.options import (
    SPLIT,
    BoundedInt,
    common_options,
    dataset_option,
    deprecated_spelling,
    merge_spelling,
    root_option,
)
from mrw.errors import UsageError


# -- evaluate ---------------------------------------------------------------------------------
@click.command()
@root_option
@dataset_option(None, "the submission's", "Which dataset: the submission's must be this one.")
@click.argument("preds")
@click.option(
    "--json-out",
    default=None,
    metavar="RESULTS.json",
    help="Write the results JSON here.",
)
@deprecated_spelling("--json", "--json-out", "json_out_deprecated", "RESULTS.json")
@click.option(
    "--leaderboard", is_flag=True, help="Rank the submission by rsum among the published results."
)
@click.option(
    "--plot-out",
    default=None,
    metavar="CURVES.png",
    help="Draw the Recall@K curves of both directions, with the published points, here.",
)
@deprecated_spelling("--plot", "--plot-out", "plot_out_deprecated", "CURVES.png")
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
def evaluate(
    root: str,
    dataset: str | None,
    preds: str,
    json_out: str | None,
    json_out_deprecated: str | None,
    leaderboard: bool,
    plot_out: str | None,
    plot_out_deprecated: str | None,
    gpu: bool,
    all_sentences: bool,
    allow_missing: bool,
) -> None:
    """The standard retrieval evaluation of PREDS (a preds.json; dataset and split inside)."""
    from mrw.evaluation import run_evaluate

    json_out = merge_spelling(json_out, json_out_deprecated, "--json-out", "--json")
    plot_out = merge_spelling(plot_out, plot_out_deprecated, "--plot-out", "--plot")
    run_evaluate(
        preds,
        root=root,
        dataset=dataset,
        json_out=json_out,
        leaderboard=leaderboard,
        plot=plot_out,
        gpu=gpu,
        all_sentences=all_sentences,
        allow_missing=allow_missing,
        echo=click.echo,
    )


# -- build-vocab ------------------------------------------------------------------------------
@click.command("build-vocab")
@common_options
@click.option(
    "--split",
    type=SPLIT,
    default=None,
    metavar="SPLIT",
    help="The split whose sentences count (train, val or test); required unless --reference.",
)
@click.option(
    "--out",
    default=None,
    metavar="FILE.json",
    show_default="<root>/<dataset>/vocab-<split>.json",
    help="Where to write it.",
)
@click.option(
    "--min-count",
    type=BoundedInt(min=1),
    default=1,
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
@handle_errors
def build_vocab(
    root: str,
    dataset: str,
    split: str | None,
    out: str | None,
    min_count: int,
    protocol_only: bool,
    reference: bool,
) -> None:
    """The vocabulary of a split's sentences (Treebank tokens, lower-cased) as JSON."""
    from mrw.text import build_vocabulary

    if reference and split is not None:
        raise UsageError("--reference counts every split: drop --split")
    if not reference and split is None:
        raise UsageError("--split is needed (or --reference, which counts every split)")
    path, vocab = build_vocabulary(
        root=root,
        dataset=dataset,
        split=split or "train",
        out=out,
        min_count=min_count,
        all_sentences=not protocol_only,
        reference=reference,
    )
    click.echo(f"vocabulary: {len(vocab)} entries -> {path}")


COMMANDS = [evaluate, build_vocab]
