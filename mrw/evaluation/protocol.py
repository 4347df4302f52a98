"""The retrieval metrics: pure functions of ranks, the same for every input kind.

The rank of a query is the number of *wrong* candidates scoring >= its best right answer, so ties
count against the submission. R@K = 100 x the share of queries with rank < K;
MedR = floor(median(rank)) + 1; MeanR = mean(rank) + 1; nMR = MedR / number of candidates;
rsum = the six recalls summed (docs/evaluation.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RECALL_KS = (1, 5, 10)
METRICS = ("R@1", "R@5", "R@10", "MedR", "MeanR", "nMR")
DIRECTIONS = ("i2t", "t2i")


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """100 x the share of queries whose rank (wrong candidates ahead) is below k."""
    ranks = np.asarray(ranks)
    return 100.0 * float(np.count_nonzero(ranks < k)) / len(ranks)


def median_rank(ranks: np.ndarray) -> float:
    return float(np.floor(np.median(ranks)) + 1)


def mean_rank(ranks: np.ndarray) -> float:
    return float(np.mean(ranks, dtype=np.float64) + 1)


def recall_curve(ranks: np.ndarray, num_candidates: int) -> np.ndarray:
    """R@K for K = 1 .. num_candidates (entry K-1)."""
    hist = np.bincount(np.asarray(ranks, dtype=np.int64), minlength=num_candidates)[:num_candidates]
    return 100.0 * np.cumsum(hist) / len(ranks)


@dataclass
class Ranks:
    """The ranks of one direction's queries: exact where `lo == hi`, else bounds (truncated lists)."""

    lo: np.ndarray
    hi: np.ndarray
    num_candidates: int
    truncated_at: tuple[int, int] | None = None  # shortest and longest list, for messages

    @classmethod
    def exact(cls, ranks: np.ndarray, num_candidates: int) -> Ranks:
        ranks = np.asarray(ranks, dtype=np.int64)
        return cls(ranks, ranks, num_candidates)

    @property
    def unknown(self) -> int:
        return int(np.count_nonzero(self.lo != self.hi))

    @property
    def exact_upto(self) -> int:
        """The largest K for which R@K is exact for every query."""
        unknown = self.lo != self.hi
        return int(self.lo[unknown].min()) if unknown.any() else self.num_candidates


def direction_metrics(ranks: Ranks) -> tuple[dict, dict]:
    """({metric: value or None}, {metric: reason it is None})."""
    values: dict = {}
    reasons: dict = {}
    why = ""
    if ranks.unknown:
        cut = ranks.truncated_at
        why = (
            f"{ranks.unknown} of {len(ranks.lo)} queries have no right answer in their "
            f"truncated list (top {cut[0] if cut else '?'}"
            + (f" to {cut[1]}" if cut and cut[1] != cut[0] else "")
            + ")"
        )
    for k in RECALL_KS:
        lo_val, hi_val = recall_at_k(ranks.hi, k), recall_at_k(ranks.lo, k)
        values[f"R@{k}"] = lo_val if lo_val == hi_val else None
        if values[f"R@{k}"] is None:
            reasons[f"R@{k}"] = why
    med_lo, med_hi = median_rank(ranks.lo), median_rank(ranks.hi)
    values["MedR"] = med_lo if med_lo == med_hi else None
    values["nMR"] = values["MedR"] / ranks.num_candidates if values["MedR"] is not None else None
    if values["MedR"] is None:
        reasons["MedR"] = reasons["nMR"] = f"the median rank lies beyond the lists: {why}"
    mean_lo, mean_hi = mean_rank(ranks.lo), mean_rank(ranks.hi)
    values["MeanR"] = mean_lo if mean_lo == mean_hi else None
    if values["MeanR"] is None:
        reasons["MeanR"] = why
    return {m: values[m] for m in METRICS}, reasons


def protocol_metrics(folds: Sequence[tuple[Ranks, Ranks]]) -> dict:
    """The results of one protocol: each metric averaged over folds (one fold: itself)."""
    out: dict = {}
    for d, direction in enumerate(DIRECTIONS):
        per_fold = [direction_metrics(fold[d]) for fold in folds]
        values: dict = {}
        reasons: dict = {}
        for m in METRICS:
            vals = [v[m] for v, _ in per_fold]
            values[m] = None if any(v is None for v in vals) else float(np.mean(vals))
            if values[m] is None:
                reasons[m] = next(r[m] for v, r in per_fold if v[m] is None)
        out[direction] = values
        if reasons:
            out[direction]["reasons"] = reasons
    recalls = [out[d][f"R@{k}"] for d in DIRECTIONS for k in RECALL_KS]
    out["rsum"] = None if any(r is None for r in recalls) else float(sum(recalls))
    if len(folds) > 1:
        out["folds"] = len(folds)
    return out
