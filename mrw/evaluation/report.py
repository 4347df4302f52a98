"""What `mrw evaluate` prints and draws: the results table, the leaderboard, the recall curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mrw import paths
from mrw.evaluation.protocol import DIRECTIONS, METRICS, RECALL_KS, recall_curve
from mrw.shards import atomic_path

if TYPE_CHECKING:
    import matplotlib.figure

BOARD_METRICS = ("R@1", "R@5", "R@10", "MedR")


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "null"
    if metric == "nMR":
        return f"{value:.4f}"
    if metric in ("MedR", "MeanR"):
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_results(results: dict) -> str:
    lines = [
        f"{results['dataset']}/{results['split']}  model: {results['model']}  "
        f"({results['num_items']} items, {results['num_sentences']} sentences, "
        f"{results['sentences']} sentences, from {results['input']})"
    ]
    header = f"{'protocol':<9}{'direction':<10}" + "".join(f"{m:>10}" for m in METRICS)
    lines += [header, "-" * len(header)]
    notes = []
    for name, proto in results["protocols"].items():
        label = name + (f" ({proto['folds']} folds)" if "folds" in proto else "")
        for d in DIRECTIONS:
            lines.append(
                f"{label if d == 'i2t' else '':<9}{d:<10}"
                + "".join(f"{_fmt(proto[d][m], m):>10}" for m in METRICS)
            )
            for m, why in proto[d].get("reasons", {}).items():
                notes.append(f"{name} {d} {m} is null: {why}")
        lines.append(f"{'':<9}{'rsum':<10}{_fmt(proto['rsum'], 'rsum'):>10}")
    cov = results.get("coverage")
    if cov:
        notes.append(
            f"evaluated on {cov['evaluated_items']} of the split's {cov['catalog_items']} "
            f"items: {cov['left_out']} left out, {cov['why']}"
        )
    for name, proto in results["protocols"].items():
        if not proto.get("comparable", True):
            notes.append(
                f"{name}: not comparable with the published results: "
                + proto.get("not_comparable_because", "")
            )
    return "\n".join(lines + notes)


def leaderboard_path(dataset: str) -> Path:
    from mrw.descriptors import metadata_dir

    return metadata_dir() / "leaderboards" / f"{paths.check_dataset(dataset)}.json"


def load_leaderboard(dataset: str) -> dict:
    path = leaderboard_path(dataset)
    board = json.loads(path.read_text())
    for entry in board["entries"]:
        recalls = [entry[d].get(f"R@{k}") for d in DIRECTIONS for k in RECALL_KS]
        entry["rsum"] = None if any(r is None for r in recalls) else round(sum(recalls), 2)
    return board


def _board_row(r: dict, rank: str, mark: str) -> str:
    cells = "".join(f"{_fmt(r['i2t'].get(m), m):>10}" for m in BOARD_METRICS)
    cells2 = "".join(f"{_fmt(r['t2i'].get(m), m):>10}" for m in BOARD_METRICS)
    return (
        f"{rank:>3}{mark} {r['model'][:36]:<36}{_fmt(r['rsum'], 'rsum'):>8}  |{cells}  |{cells2}  "
        f"{r['source'].get('short', '')}"
    )


def format_leaderboard(results: dict, board: dict) -> str:
    """Per protocol, the published rows ranked by rsum; this submission among them only when its
    numbers are comparable, else in a block of its own below them, with the reason."""
    lines = []
    for name, proto in results["protocols"].items():
        rows = [dict(e, mine=False) for e in board["entries"] if e["protocol"] == name]
        mine = {
            "model": f"{results['model']} (this submission)",
            "protocol": name,
            "i2t": proto["i2t"],
            "t2i": proto["t2i"],
            "rsum": proto["rsum"],
            "mine": True,
            "source": {"short": "this run"},
        }
        comparable = proto.get("comparable", False)
        if comparable:
            rows.append(mine)
        rows.sort(key=lambda r: -(r["rsum"] if r["rsum"] is not None else -np.inf))
        lines.append(f"leaderboard {results['dataset']} {name}, ranked by rsum")
        header = (
            f"{'#':>3}  {'model':<36}{'rsum':>8}  |"
            + "".join(f"{'i2t ' + m:>10}" for m in BOARD_METRICS)
            + "  |"
            + "".join(f"{'t2i ' + m:>10}" for m in BOARD_METRICS)
            + "  source"
        )
        lines += [header, "-" * len(header)]
        for n, r in enumerate(rows, 1):
            lines.append(_board_row(r, str(n), ">" if r["mine"] else " "))
        if not comparable:
            lines.append(
                "not ranked: this submission is not comparable with the published rows, "
                f"because {proto.get('not_comparable_because', 'unknown')}"
            )
            lines.append(_board_row(mine, "-", ">"))
        lines.append("")
    for key in ("note", "missing"):
        if board.get(key):
            lines.append(f"{key}: {board[key]}")
    return "\n".join(lines).rstrip()


def plot_recall_curves(
    results: dict, curves: dict, board: dict | None, out: Path
) -> matplotlib.figure.Figure:
    """Recall@K for K = 1..candidates (log axis), both directions, with published R@1/5/10 points.

    Written to a temporary name and renamed; returns the matplotlib Figure (for inspection).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = next(iter(curves))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    titles = {"i2t": "video/image -> text", "t2i": "text -> video/image"}
    for ax, d in zip(axes, DIRECTIONS):
        ranks = curves[name][d]
        upto = ranks.exact_upto
        ks = np.arange(1, upto + 1)
        # R@K is exact up to `upto`; the lower bound of every rank gives the curve there
        ax.plot(
            ks,
            recall_curve(np.minimum(ranks.lo, ranks.num_candidates - 1), ranks.num_candidates)[
                :upto
            ],
            label=f"{results['model']} (this submission)",
            color="black",
            linewidth=2,
        )
        for n, e in enumerate(e for e in (board or {}).get("entries", []) if e["protocol"] == name):
            pts = [(k, e[d][f"R@{k}"]) for k in RECALL_KS if e[d].get(f"R@{k}") is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", linestyle="--", color=f"C{n}", label=e["model"])
        ax.set_xscale("log")
        ax.set_xlim(1, max(ranks.num_candidates, 2))
        ax.set_ylim(0, 100)
        ax.set_xlabel("K (log scale)")
        ax.set_ylabel("R@K (%)")
        ax.set_title(f"{results['dataset']} {name}: {titles[d]}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return fig
