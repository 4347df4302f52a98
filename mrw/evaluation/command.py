"""`mrw evaluate`: a `preds.json` through the protocol, to a table, a results JSON and a plot."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

from mrw import paths
from mrw.device import device_name
from mrw.errors import UsageError
from mrw.evaluation.coverage import leave_out_missing, not_comparable_because
from mrw.evaluation.groundtruth import load_ground_truth
from mrw.evaluation.protocol import DIRECTIONS, protocol_metrics
from mrw.evaluation.report import (
    format_leaderboard,
    format_results,
    load_leaderboard,
    plot_recall_curves,
)
from mrw.evaluation.submission import KINDS, load_submission, read_preds


def evaluate_submission(
    preds_path: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    dataset: str | None = None,
    gpu: bool = False,
    all_sentences: bool = False,
    allow_missing: bool = False,
) -> tuple[dict, dict]:
    """(results JSON, curves) for a `preds.json`; raises UsageError on any bad input.

    `curves` maps protocol -> direction -> `Ranks` of the whole set, for plots. Items the
    submission lacks are left out when the pipeline failed on them (or with `allow_missing`),
    and `results["coverage"]` says how many. Each protocol says whether its numbers compare
    with the published ones (`comparable`, else `not_comparable_because`).
    """
    preds_path = Path(preds_path)
    preds = read_preds(preds_path)
    where = preds_path.name
    if dataset is not None and paths.check_dataset(dataset) != preds["dataset"]:
        raise UsageError(
            f"{where}: the submission is for dataset {preds['dataset']!r}, "
            f"but --dataset {dataset} was given"
        )
    device = device_name(gpu)
    full = load_ground_truth(root, preds["dataset"], preds["split"], all_sentences)
    chosen = leave_out_missing(preds, full, root, allow_missing, where)
    gt = chosen.gt
    submission = load_submission(
        chosen.preds,
        preds_path.parent,
        gt,
        device,
        where,
        chosen.sentence_rows,
        chosen.sentences_given,
    )
    results: dict = {
        "dataset": gt.dataset,
        "split": gt.split,
        "model": preds.get("model", preds_path.stem[:200]),
        "sentences": "all" if all_sentences else "protocol",
        "num_items": gt.num_items,
        "num_sentences": gt.num_sentences,
        "input": next(k for k in KINDS if k in preds),
        "protocols": {},
    }
    if chosen.coverage is not None:
        results["coverage"] = chosen.coverage.to_json()
    curves = {}
    for name, folds in gt.protocols().items():
        ranked = [submission.ranks(f, gt) for f in folds]
        metrics = protocol_metrics(ranked)
        reasons = not_comparable_because(name, len(folds), gt, chosen.coverage)
        metrics["comparable"] = not reasons
        if reasons:
            metrics["not_comparable_because"] = "; ".join(reasons)
        results["protocols"][name] = metrics
        if len(folds) == 1:
            curves[name] = dict(zip(DIRECTIONS, ranked[0]))
    return results, curves


def check_output_path(path: str | os.PathLike[str], suffixes: Sequence[str], option: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder, expected a file name")
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"{option} {path}: expected a {' or '.join(suffixes)} file name")
    return path


def run_evaluate(
    preds_path: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    dataset: str | None = None,
    json_out: str | os.PathLike[str] | None = None,
    leaderboard: bool = False,
    plot: str | os.PathLike[str] | None = None,
    gpu: bool = False,
    all_sentences: bool = False,
    allow_missing: bool = False,
    echo: Callable[[str], None] = print,
) -> dict:
    """What `mrw evaluate` does: evaluate, print the table, then write the asked outputs."""
    if json_out is not None:
        json_out = check_output_path(json_out, (".json",), "--json-out")
    if plot is not None:
        plot = check_output_path(plot, (".png",), "--plot-out")
    results, curves = evaluate_submission(
        preds_path, root, dataset, gpu, all_sentences, allow_missing
    )
    board = load_leaderboard(results["dataset"]) if (leaderboard or plot) else None
    echo(format_results(results))
    if leaderboard and board is not None:  # loaded whenever leaderboard is asked
        echo("")
        echo(format_leaderboard(results, board))
    if json_out is not None:
        from mrw.shards import write_json_atomic

        write_json_atomic(results, json_out)
    if plot is not None:
        plot_recall_curves(results, curves, board, plot)
    return results
