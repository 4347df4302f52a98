"""What a model retrieves, for the preview: per shown query its top candidates and the rank of
the right answer.

The submission is checked and ranked by the evaluator itself (`mrw.evaluate`), so every rank
shown is the one `mrw evaluate` counts; only the few shown queries are scored again here, to
list their top candidates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mrw.errors import FatalError
from mrw.evaluate import (
    GroundTruth,
    Ranks,
    evaluate_submission,
    load_ground_truth,
    read_preds,
)

TOP_K = 5
SCORE_BLOCK_ROWS = 8192  # candidates scored at once: bounds memory on a large split


@dataclass
class Shown:
    """One shown query: its id, why it was picked, the rank of its right answer, its top list."""

    query: str
    picked: str  # "random" or "worst"
    rank: int | None  # 1 = first; None: beyond a truncated ranking
    ranked_beyond: int | None  # the list's length when `rank` is None
    top: list[dict] = field(default_factory=list)  # {"id", "score", "right"}
    answers: list[str] = field(default_factory=list)  # right candidates outside `top`


@dataclass
class Retrieval:
    results: dict
    curves: dict
    protocol: str
    gt: GroundTruth
    t2i: list[Shown]
    i2t: list[Shown]
    t2i_ranks: list[int | None]  # 1-based, every sentence of `gt`, None where not exact
    i2t_ranks: list[int | None]

    def items_shown(self) -> set[str]:
        """Every item a strip is needed for: query items and retrieved items."""
        out = {c["id"] for q in self.t2i for c in q.top}
        out.update(a for q in self.t2i for a in q.answers)
        out.update(q.query for q in self.i2t)
        return out

    def to_json(self) -> dict:
        def shown(qs: list[Shown]) -> list[dict]:
            return [
                {
                    "query": q.query,
                    "picked": q.picked,
                    "rank": q.rank,
                    "ranked_beyond": q.ranked_beyond,
                    "top": q.top,
                    "answers": q.answers,
                }
                for q in qs
            ]

        return {
            "dataset": self.results["dataset"],
            "split": self.results["split"],
            "model": self.results["model"],
            "protocol": self.protocol,
            "rank_means": "1 = the right answer came first (the evaluator's count of wrong "
            "candidates ahead, plus one); null: beyond a truncated ranking",
            "t2i": {
                "queries": self.gt.sentence_ids,
                "ranks": self.t2i_ranks,
                "shown": shown(self.t2i),
            },
            "i2t": {"queries": self.gt.item_ids, "ranks": self.i2t_ranks, "shown": shown(self.i2t)},
        }


# -- the submission's numbers, for a few queries ---------------------------------------------
def _orders(preds: dict, gt: GroundTruth) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the submission's arrays for gt's items and for gt's sentences."""

    def rows(key: str, ids: list[str], full: list[str]) -> np.ndarray:
        given = preds.get(key)
        position = {i: n for n, i in enumerate(given if isinstance(given, list) else full)}
        return np.fromiter((position[i] for i in ids), dtype=np.int64, count=len(ids))

    return rows("item_ids", gt.item_ids, gt.item_ids), rows(
        "sentence_ids", gt.sentence_ids, gt.sentence_ids
    )


class _Scorer:
    """Scores of one query against every candidate of `gt`, from `scores` or `embeddings`."""

    def __init__(self, preds: dict, base: Path, gt: GroundTruth):
        self.item_rows, self.sentence_rows = _orders(preds, gt)
        if "scores" in preds:
            self.scores = np.load(_path(base, preds["scores"]), mmap_mode="r")
            self.items = self.sentences = None
        else:
            emb = preds["embeddings"]
            self.scores = None
            self.items = np.load(_path(base, emb["items"]), mmap_mode="r")
            self.sentences = np.load(_path(base, emb["sentences"]), mmap_mode="r")

    @staticmethod
    def _instances(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float32)
        return a[:, None, :] if a.ndim == 2 else a

    def _max_products(self, query: np.ndarray, cands: np.ndarray, rows: np.ndarray) -> np.ndarray:
        q = self._instances(query[None])[0]  # [Kq, D]
        out = np.empty(len(rows), dtype=np.float32)
        for a in range(0, len(rows), SCORE_BLOCK_ROWS):
            block = self._instances(cands[rows[a : a + SCORE_BLOCK_ROWS]])
            prod = block.reshape(-1, block.shape[-1]) @ q.T  # [b*Kc, Kq]
            out[a : a + len(block)] = prod.reshape(len(block), -1).max(axis=1)
        return out

    def items_for(self, sentence: int) -> np.ndarray:
        """Score of each item of gt for sentence `sentence` (gt index)."""
        col = self.sentence_rows[sentence]
        if self.scores is not None:
            return np.asarray(self.scores[:, col], dtype=np.float64)[self.item_rows]
        assert self.items is not None and self.sentences is not None  # embeddings, if no scores
        return self._max_products(self.sentences[col], self.items, self.item_rows)

    def sentences_for(self, item: int) -> np.ndarray:
        row = self.item_rows[item]
        if self.scores is not None:
            return np.asarray(self.scores[row], dtype=np.float64)[self.sentence_rows]
        assert self.items is not None and self.sentences is not None  # embeddings, if no scores
        return self._max_products(self.items[row], self.sentences, self.sentence_rows)


def _path(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else base / p


def _top(scores: np.ndarray, right: np.ndarray, k: int) -> list[int]:
    """Best first; among equal scores the wrong candidates go first, as ties count against."""
    order = np.lexsort((np.arange(len(scores)), right, -scores))
    return [int(c) for c in order[:k]]


# -- choosing the queries --------------------------------------------------------------------
def pick(ranks: Ranks, count: int, rng: np.random.Generator) -> list[tuple[int, str]]:
    """`count` queries at random, then up to `count` more of the worst-ranked ones."""
    n = len(ranks.lo)
    chosen = [int(q) for q in rng.choice(n, size=min(count, n), replace=False)]
    taken = set(chosen)
    worst = [int(q) for q in np.lexsort((np.arange(n), -ranks.lo)) if int(q) not in taken][:count]
    return [(q, "random") for q in sorted(chosen)] + [(q, "worst") for q in worst]


def _rank_of(ranks: Ranks, q: int) -> tuple[int | None, int | None]:
    lo, hi = int(ranks.lo[q]), int(ranks.hi[q])
    return (lo + 1, None) if lo == hi else (None, lo)


def _all_ranks(ranks: Ranks) -> list[int | None]:
    exact = ranks.lo == ranks.hi
    return [int(r) + 1 if e else None for r, e in zip(ranks.lo, exact)]


def _kept_ground_truth(
    preds: dict, results: dict, root: str | os.PathLike[str] | None
) -> GroundTruth:
    """The items the evaluator ranked: the split's, less those the submission left out."""
    gt = load_ground_truth(root, results["dataset"], results["split"])
    if "coverage" in results:
        if "rankings" in preds:
            named = set(preds["rankings"]["i2t"])
        else:
            named = set(preds["item_ids"])
        gt = gt.subset(np.fromiter((i in named for i in gt.item_ids), dtype=bool))
    if gt.num_items != results["num_items"] or gt.num_sentences != results["num_sentences"]:
        raise FatalError(
            f"the preview's ground truth ({gt.num_items} items, {gt.num_sentences} sentences) "
            f"is not the evaluator's ({results['num_items']}, {results['num_sentences']})"
        )
    return gt


def retrieve(
    preds_path: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    dataset: str | None = None,
    queries: int = 10,
    seed: int = 0,
    allow_missing: bool = False,
) -> Retrieval:
    """Evaluate `preds_path` and list, for the picked queries of both directions, the top
    `TOP_K` candidates and the rank of the right answer."""
    preds_path = Path(preds_path)
    results, curves = evaluate_submission(preds_path, root, dataset, allow_missing=allow_missing)
    preds = read_preds(preds_path)
    protocol = next(iter(curves))
    t2i_ranks, i2t_ranks = curves[protocol]["t2i"], curves[protocol]["i2t"]
    gt = _kept_ground_truth(preds, results, root)
    rng = np.random.default_rng(seed)
    owner = gt.owner
    t2i: list[Shown] = []
    i2t: list[Shown] = []
    if "rankings" in preds:
        kept_items, kept_sents = gt.item_index, gt.sentence_index
        for q, why in pick(t2i_ranks, queries, rng):
            lst = [c for c in preds["rankings"]["t2i"][gt.sentence_ids[q]] if c in kept_items]
            top = [{"id": c, "score": None, "right": kept_items[c] == owner[q]} for c in lst]
            t2i.append(Shown(gt.sentence_ids[q], why, *_rank_of(t2i_ranks, q), top[:TOP_K]))
        for q, why in pick(i2t_ranks, queries, rng):
            lst = [c for c in preds["rankings"]["i2t"][gt.item_ids[q]] if c in kept_sents]
            top = [{"id": c, "score": None, "right": owner[kept_sents[c]] == q} for c in lst]
            i2t.append(Shown(gt.item_ids[q], why, *_rank_of(i2t_ranks, q), top[:TOP_K]))
    else:
        scorer = _Scorer(preds, preds_path.parent, gt)
        for q, why in pick(t2i_ranks, queries, rng):
            scores = scorer.items_for(q)
            right = np.arange(gt.num_items) == owner[q]
            top = [
                {"id": gt.item_ids[c], "score": round(float(scores[c]), 4), "right": bool(right[c])}
                for c in _top(scores, right, TOP_K)
            ]
            t2i.append(Shown(gt.sentence_ids[q], why, *_rank_of(t2i_ranks, q), top))
        for q, why in pick(i2t_ranks, queries, rng):
            scores = scorer.sentences_for(q)
            right = owner == q
            top = [
                {
                    "id": gt.sentence_ids[c],
                    "score": round(float(scores[c]), 4),
                    "right": bool(right[c]),
                }
                for c in _top(scores, right, TOP_K)
            ]
            i2t.append(Shown(gt.item_ids[q], why, *_rank_of(i2t_ranks, q), top))
    for shown in t2i:
        shown.answers = (
            []
            if any(c["right"] for c in shown.top)
            else [gt.item_ids[owner[gt.sentence_index[shown.query]]]]
        )
    for shown in i2t:
        if not any(c["right"] for c in shown.top):
            n = gt.item_index[shown.query]
            shown.answers = gt.sentence_ids[gt.sentence_range(slice(n, n + 1))]
    for shown in (*t2i, *i2t):
        for c in shown.top:
            c["right"] = bool(c["right"])
    return Retrieval(
        results, curves, protocol, gt, t2i, i2t, _all_ranks(t2i_ranks), _all_ranks(i2t_ranks)
    )
