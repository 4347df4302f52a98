"""`mrw evaluate`: the standard cross-modal retrieval protocol over a `preds.json` submission.

The protocol is the one of the reference code (yalesong/pvse `eval.py`, which follows VSE++),
restated here so that it can be checked (interfaces.md, section 4):

- the rank of a query is the number of *wrong* candidates scoring >= the best-scoring right one,
  so ties count against the submission and constant scores cannot score well;
- R@K = 100 x the share of queries with rank < K; MedR = floor(median(rank)) + 1;
  MeanR = mean(rank) + 1; nMR = MedR / number of candidates; rsum = the six recalls summed;
- i2t: one query per item, its right answers are all its sentences (the best-ranked one counts);
  t2i: one query per sentence, its one right answer is its item;
- with K embeddings per instance, a pair scores the maximum of its K x K dot products;
- MRW and TGIF: the whole test split (`full`); COCO: `5k` (all test images) and `1k` (every metric
  averaged over five folds of 1,000 consecutive test images and their captions).

Where the reference code differs, and what this evaluator does instead:

- Ties. The reference sorts with `np.argsort` and takes the position of the right answer, so
  among equal scores the order is whatever the sort leaves; constant scores can then score
  perfectly. Here every tie counts against the submission. On inputs without ties both agree.
- nMR. The reference divides MedR by `img_embs.shape[0]`, the number of caption rows (images are
  repeated once per caption for COCO), for both directions and even inside the 1k folds. Here nMR
  divides by the number of candidates the query ranked: sentences for i2t, items for t2i, within
  the protocol's candidate set. MRW and TGIF (one sentence per item) give the same numbers.
- 5-fold rsum. The reference prints `mean_metrics[-1] * 6` where `mean_metrics[-1]` is already
  the mean rsum, six times too large. Here the 1k rsum is the mean of the five folds' rsums, which
  is also the sum of the six mean recalls.
- Precision. The reference scores in float64 on the CPU and float32 on the GPU. Here scores from
  embeddings are always float32 products (BLAS), computed once per pair in row blocks that serve
  both directions, so each score is one number whichever direction compares it. Score matrices
  given as `scores` are compared in their own dtype, as given.
- Speed. The reference loops over queries in Python and re-sorts every candidate list. Here the
  rank is a count (`>=` against a threshold), so no sort is needed and memory stays bounded.

Truncated `rankings` (top k >= 10) keep R@1/5/10 exact; MedR and MeanR are reported where the
lists bound them exactly (a lower and an upper bound of every rank are carried through), else
`null` with the reason.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from mrw import paths
from mrw.errors import UsageError

RECALL_KS = (1, 5, 10)
METRICS = ("R@1", "R@5", "R@10", "MedR", "MeanR", "nMR")
DIRECTIONS = ("i2t", "t2i")
MIN_RANKING_LENGTH = 10
COCO_FOLD_SIZE = 1000
KINDS = ("rankings", "scores", "embeddings")
TOP_LEVEL_KEYS = {"dataset", "split", "model", "item_ids", "sentence_ids", *KINDS}
DEFAULT_BLOCK_BYTES = 64 * 2**20  # one block of K x K products; bounds the evaluator's memory


# -- metrics: pure functions over ranks ------------------------------------------------------
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


# -- ranks: pure functions over a score matrix and the owner of each sentence ---------------
def best_right_scores(right: np.ndarray, owner: np.ndarray, num_items: int) -> np.ndarray:
    """Per item, the best score among its own sentences (`right[j]` = score of j with its item)."""
    best = np.full(num_items, -np.inf, dtype=np.float64)
    np.maximum.at(best, owner, right.astype(np.float64))
    return best


class RankCounter:
    """Counts, for both directions at once, the candidates scoring >= each query's right answer.

    Feed it every (item, sentence) score exactly once, in blocks of rows; the right scores must be
    known first (they come from the same numbers, see `ranks_from_embeddings`).
    """

    def __init__(self, right: np.ndarray, owner: np.ndarray, num_items: int):
        self.owner = np.asarray(owner, dtype=np.int64)
        self.right = np.asarray(right)
        self.best = best_right_scores(self.right, self.owner, num_items).astype(self.right.dtype)
        # right answers of item i that reach its best score: all are counted by `>=`, none is wrong
        self.right_at_best = np.bincount(
            self.owner[self.right >= self.best[self.owner]], minlength=num_items
        )
        self.i2t_at_least = np.zeros(num_items, dtype=np.int64)
        self.t2i_at_least = np.zeros(len(self.owner), dtype=np.int64)

    def add(self, rows: slice, cols: slice, block: np.ndarray) -> None:
        """A block of scores `[rows, cols]`."""
        self.i2t_at_least[rows] += np.count_nonzero(block >= self.best[rows, None], axis=1)
        self.t2i_at_least[cols] += np.count_nonzero(block >= self.right[None, cols], axis=0)

    def ranks(self) -> tuple[np.ndarray, np.ndarray]:
        # t2i: the item itself always scores >= its own right score, and is not wrong
        return self.i2t_at_least - self.right_at_best, self.t2i_at_least - 1


def ranks_from_scores(scores: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(i2t ranks per item, t2i ranks per sentence) of an in-memory `[items x sentences]` matrix."""
    scores = np.asarray(scores)
    owner = np.asarray(owner, dtype=np.int64)
    counter = RankCounter(scores[owner, np.arange(len(owner))], owner, scores.shape[0])
    counter.add(slice(None), slice(None), scores)
    return counter.ranks()


# -- scores from embeddings, in blocks -------------------------------------------------------
def _as_instances(emb: np.ndarray) -> np.ndarray:
    """`[N, D]` -> `[N, 1, D]`, float32, C-contiguous."""
    emb = np.asarray(emb)
    if emb.ndim == 2:
        emb = emb[:, None, :]
    return np.ascontiguousarray(emb, dtype=np.float32)


class _BlockScorer:
    """Max-over-K x K dot products of a block of items against a range of sentences.

    Sentences are kept as K slabs `[K, M, D]`, so any range of sentences is a contiguous slice of
    each slab: one float32 product per slab (`[b*Ka, D] @ [D, m]`), reduced over the item's K
    (contiguous rows) and then over the slabs, all cheap next to the products themselves.
    """

    def __init__(
        self,
        items: np.ndarray,
        sentences: np.ndarray,
        device: str = "cpu",
        use_torch: bool | None = None,
    ):
        self.items = _as_instances(items)
        sents = _as_instances(sentences)
        self.ka, self.ks = self.items.shape[1], sents.shape[1]
        self.num_sentences = sents.shape[0]
        self.device = device
        # numpy on the CPU; torch on any other device (and on the CPU when asked, for tests)
        self.use_torch = device != "cpu" if use_torch is None else use_torch
        self._products = np.empty(0, dtype=np.float32)
        slabs = np.ascontiguousarray(sents.transpose(1, 0, 2))  # [Ks, M, D]
        if not self.use_torch:
            self.slabs = slabs
        else:
            import torch

            self.torch = torch
            self.slabs = torch.from_numpy(slabs).to(device)

    def _buffer(self, size: int) -> np.ndarray:
        if self._products.size < size:
            self._products = np.empty(size, dtype=np.float32)
        return self._products[:size]

    def scores(self, rows: slice, cols: slice) -> np.ndarray:
        """float32 `[items in rows, sentences in cols]`."""
        a = self.items[rows]
        b, m = a.shape[0], cols.stop - cols.start
        a2 = a.reshape(-1, a.shape[2])
        if self.use_torch:  # a copy: the items may be a read-only memory map
            a2 = self.torch.tensor(a2, device=self.device)
        out = None
        for k in range(self.ks):
            if not self.use_torch:
                # one reused buffer for the products: fresh 10-100 MB arrays cost page faults
                prod = np.matmul(
                    a2, self.slabs[k, cols].T, out=self._buffer(b * self.ka * m).reshape(-1, m)
                )
                if out is None:
                    out = prod.reshape(b, self.ka, m).max(axis=1)
                else:
                    np.maximum(out, prod.reshape(b, self.ka, m).max(axis=1), out=out)
            else:
                prod = a2 @ self.slabs[k, cols].T
                best = prod.view(b, self.ka, m).amax(dim=1)
                out = best if out is None else self.torch.maximum(out, best, out=out)
        return out.cpu().numpy() if self.use_torch else out


def _rows_per_block(ka: int, num_sentences: int, block_bytes: int) -> int:
    return max(1, block_bytes // max(1, ka * num_sentences * 4))


def ranks_from_embeddings(
    items: np.ndarray,
    sentences: np.ndarray,
    owner: np.ndarray,
    device: str = "cpu",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    progress: Callable | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(i2t, t2i) ranks from embeddings `[N(,K),D]`; `owner` must be sorted (catalog order).

    One pass of float32 products in row blocks, shared by both directions, each score computed
    exactly once: first the small diagonal tiles (a block's items against their own sentences),
    which hold every right score, then each block's items against the sentences left and right
    of its tile.
    """
    owner = np.asarray(owner, dtype=np.int64)
    if len(owner) and np.any(np.diff(owner) < 0):
        raise ValueError("ranks_from_embeddings needs the sentences grouped by item, in item order")
    scorer = _BlockScorer(items, sentences, device)
    n, m = scorer.items.shape[0], scorer.num_sentences
    step = _rows_per_block(scorer.ka, m, block_bytes)
    starts = np.searchsorted(owner, np.arange(n + 1))  # sentences of item i: starts[i]:starts[i+1]
    blocks = [
        (slice(a, min(a + step, n)), slice(int(starts[a]), int(starts[min(a + step, n)])))
        for a in range(0, n, step)
    ]

    right = np.empty(m, dtype=np.float32)
    tiles = []
    for rows, cols in blocks:
        tile = scorer.scores(rows, cols)
        _check_finite_scores(tile)
        right[cols] = tile[owner[cols] - rows.start, np.arange(cols.stop - cols.start)]
        tiles.append(tile)  # small: b x (sentences of b items)
    counter = RankCounter(right, owner, n)
    for (rows, cols), tile in zip(blocks, tiles):
        counter.add(rows, cols, tile)
    del tiles
    for rows, cols in blocks:
        for others in (slice(0, cols.start), slice(cols.stop, m)):
            if others.stop > others.start:
                block = scorer.scores(rows, others)
                _check_finite_scores(block)
                counter.add(rows, others, block)
        if progress:
            progress(rows.stop - rows.start)
    return counter.ranks()


def _check_finite_scores(block):
    if not np.isfinite(block).all():
        raise UsageError(
            "embeddings: a dot product overflows float32 (scores are not finite); "
            "scale the embeddings down"
        )


# -- rank bounds and the metrics of one direction --------------------------------------------
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
    values, reasons = {}, {}
    why = ""
    if ranks.unknown:
        k = ranks.truncated_at
        why = (
            f"{ranks.unknown} of {len(ranks.lo)} queries have no right answer in their "
            f"truncated list (top {k[0]}" + (f" to {k[1]}" if k and k[1] != k[0] else "") + ")"
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
    out = {}
    for d, direction in enumerate(DIRECTIONS):
        per_fold = [direction_metrics(fold[d]) for fold in folds]
        values, reasons = {}, {}
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


# -- ground truth from the catalog -----------------------------------------------------------
@dataclass
class GroundTruth:
    """The split's items and protocol sentences, in catalog order; `owner[j]` = item of sentence j."""

    dataset: str
    split: str
    item_ids: list[str]
    sentence_ids: list[str]
    owner: np.ndarray
    all_sentences: bool = False
    item_index: dict = field(init=False, repr=False)
    sentence_index: dict = field(init=False, repr=False)

    def __post_init__(self):
        self.item_index = {i: n for n, i in enumerate(self.item_ids)}
        self.sentence_index = {s: n for n, s in enumerate(self.sentence_ids)}

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_ids)

    def sentence_range(self, items: slice) -> slice:
        """The sentences of consecutive items (catalog order keeps them together)."""
        lo, hi = np.searchsorted(self.owner, [items.start, items.stop])
        return slice(int(lo), int(hi))

    def subset(self, keep: np.ndarray) -> GroundTruth:
        """Only the items where `keep` (bool, catalog order) holds, with their sentences."""
        new_index = np.cumsum(keep) - 1
        kept_sentences = keep[self.owner]
        return GroundTruth(
            self.dataset,
            self.split,
            [i for i, k in zip(self.item_ids, keep) if k],
            [s for s, k in zip(self.sentence_ids, kept_sentences) if k],
            new_index[self.owner[kept_sentences]].astype(np.int64),
            self.all_sentences,
        )

    def protocols(self) -> dict[str, list[slice]]:
        """Protocol name -> folds of consecutive items."""
        everything = [slice(0, self.num_items)]
        if self.dataset != "coco":
            return {"full": everything}
        folds = [
            slice(f * COCO_FOLD_SIZE, (f + 1) * COCO_FOLD_SIZE)
            for f in range(self.num_items // COCO_FOLD_SIZE)
        ]
        return {"5k": everything, **({"1k": folds} if folds else {})}


def load_ground_truth(root, dataset: str, split: str, all_sentences: bool = False) -> GroundTruth:
    from mrw.catalog import read_catalog, sentence_ids

    table = read_catalog(root, dataset, split, columns=["id", "sentences", "protocol_sentences"])
    sids = sentence_ids(table, all_sentences=all_sentences)
    item_ids = table.column("id").to_pylist()
    index = {i: n for n, i in enumerate(item_ids)}
    owner = np.fromiter((index[s.rsplit("#", 1)[0]] for s in sids), dtype=np.int64, count=len(sids))
    if np.any(np.diff(owner) < 0) or len(index) != len(item_ids):
        raise UsageError(
            f"the catalog of {dataset}/{split} has duplicated ids or sentences out of "
            "item order: rebuild it with `mrw download --catalog-only`"
        )
    empty = np.flatnonzero(np.bincount(owner, minlength=len(item_ids)) == 0)
    if len(empty):
        raise UsageError(
            f"the catalog of {dataset}/{split}: item {item_ids[empty[0]]!r} has no "
            f"sentence to evaluate ({len(empty)} such items)"
        )
    return GroundTruth(dataset, paths.normalize_split(split), item_ids, sids, owner, all_sentences)


# -- the submission --------------------------------------------------------------------------
class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs):
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise _DuplicateKey(k)
        seen[k] = v
    return seen


def read_preds(path) -> dict:
    """The parsed `preds.json`, or one line saying what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        obj = json.loads(
            path.read_text(encoding="utf-8"),
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_reject_constant,
        )
    except _DuplicateKey as e:
        raise UsageError(
            f"{path}: key {e.args[0]!r} appears twice in one JSON object (a duplicated id?)"
        ) from None
    except _BadConstant as e:
        raise UsageError(
            f"{path}: {e.args[0]} is not valid JSON (write numbers, or null)"
        ) from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise UsageError(
            f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    if not isinstance(obj, dict):
        raise UsageError(f"{path}: the top level must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - TOP_LEVEL_KEYS)
    if unknown:
        raise UsageError(
            f"{path}: unknown key {unknown[0]!r} (expected: {', '.join(sorted(TOP_LEVEL_KEYS))})"
        )
    for key in ("dataset", "split"):
        if key not in obj:
            raise UsageError(f"{path}: missing {key!r}")
        if not isinstance(obj[key], str):
            raise UsageError(f"{path}: {key!r} must be a string, got {obj[key]!r}")
    if "model" in obj and not isinstance(obj["model"], str):
        raise UsageError(f"{path}: 'model' must be a string, got {obj['model']!r}")
    kinds = [k for k in KINDS if k in obj]
    if len(kinds) != 1:
        raise UsageError(
            f"{path}: exactly one of 'rankings', 'scores', 'embeddings' is needed, got "
            + (", ".join(repr(k) for k in kinds) if kinds else "none")
        )
    try:
        obj["dataset"] = paths.check_dataset(obj["dataset"])
        obj["split"] = paths.normalize_split(obj["split"])
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from None
    return obj


class _BadConstant(Exception):
    pass


def _reject_constant(name):
    raise _BadConstant(name)


def _id_order(
    preds: dict,
    key: str,
    expected: list[str],
    index: dict,
    where: str,
    hint: Callable[[str], str] = lambda s: "",
) -> np.ndarray:
    """Catalog index of each row of the submission's arrays (`item_ids`/`sentence_ids`)."""
    if key not in preds:
        return np.arange(len(expected))
    ids = preds[key]
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise UsageError(f"{where}: {key!r} must be a list of strings")
    return _check_id_set(ids, index, f"{where}: {key}", hint)


def _check_id_set(
    ids: Sequence[str], index: dict, where: str, hint: Callable[[str], str] = lambda s: ""
) -> np.ndarray:
    """Catalog indices of `ids`, which must be the split's ids exactly: no unknown, duplicate, missing."""
    order = np.empty(len(ids), dtype=np.int64)
    seen = np.zeros(len(index), dtype=bool)
    for n, i in enumerate(ids):
        c = index.get(i)
        if c is None:
            raise UsageError(f"{where}[{n}]: unknown id {i!r}{hint(i)}")
        if seen[c]:
            raise UsageError(f"{where}[{n}]: duplicated id {i!r}")
        seen[c] = True
        order[n] = c
    if not seen.all():
        missing = [i for i, c in index.items() if not seen[c]]
        raise UsageError(f"{where}: {len(missing)} id(s) of the split missing, e.g. {missing[0]!r}")
    return order


def _resolve(base: Path, value, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where}: must be a path (a string), got {value!r}")
    p = Path(value)
    p = p if p.is_absolute() else base / p
    if not p.is_file():
        raise UsageError(f"{where}: {p}: no such file")
    return p


def _load_npy(path: Path, where: str) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # numpy raises ValueError, OSError, ... on a file that is not .npy
        raise UsageError(f"{where}: {path}: not a .npy array ({e})") from None
    if not isinstance(arr, np.ndarray):
        raise UsageError(f"{where}: {path}: not a single .npy array")
    if arr.dtype.kind not in "fiu" or arr.dtype.kind == "c":
        raise UsageError(f"{where}: {path}: expected a real-valued array, got dtype {arr.dtype}")
    return arr


def _check_finite(arr: np.ndarray, where: str, describe: Callable[[tuple], str]) -> None:
    """NaN or infinite values are bad input; checked in bounded chunks of a memory map."""
    if arr.dtype.kind != "f":
        return
    step = max(1, (32 * 2**20) // max(1, arr[0].nbytes if len(arr) else 1))
    for a in range(0, len(arr), step):
        chunk = np.asarray(arr[a : a + step])
        bad = ~np.isfinite(chunk)
        if bad.any():
            pos = np.unravel_index(int(np.argmax(bad)), chunk.shape)
            pos = (pos[0] + a,) + tuple(pos[1:])
            value = chunk[(pos[0] - a,) + tuple(pos[1:])]
            raise UsageError(f"{where}: {value} at {list(map(int, pos))} ({describe(pos)})")


class Submission:
    """One input kind, able to rank any fold of consecutive catalog items."""

    def ranks(self, items: slice, gt: GroundTruth) -> tuple[Ranks, Ranks]:
        raise NotImplementedError


class ScoreSubmission(Submission):
    @staticmethod
    def _real(a):
        a = np.asarray(a)
        return a.astype(np.float64) if a.dtype.kind in "iu" else a

    def __init__(self, scores: np.ndarray, item_rows: np.ndarray, sentence_cols: np.ndarray):
        self.scores = scores  # memory-mapped, submission order
        self.item_rows = item_rows  # catalog item -> row
        self.sentence_cols = sentence_cols  # catalog sentence -> column

    def ranks(self, items, gt):
        sents = gt.sentence_range(items)
        rows, cols = self.item_rows[items], self.sentence_cols[sents]
        owner = gt.owner[sents] - items.start
        col_sel = _as_slice(cols)
        n = items.stop - items.start
        right = self._real(self.scores[rows[owner], cols])
        counter = RankCounter(right, owner, n)
        step = max(1, DEFAULT_BLOCK_BYTES // max(1, len(cols) * self.scores.itemsize))
        for a in range(0, n, step):
            r = slice(a, min(a + step, n))
            counter.add(r, slice(None), self._real(self.scores[_as_slice(rows[r])][:, col_sel]))
        i2t, t2i = counter.ranks()
        return Ranks.exact(i2t, len(cols)), Ranks.exact(t2i, n)


def _as_slice(index: np.ndarray):
    """A run of consecutive indices as a slice (a cheap view of a memory map), else the indices."""
    if len(index) and np.array_equal(index, np.arange(index[0], index[0] + len(index))):
        return slice(int(index[0]), int(index[0]) + len(index))
    return index


class EmbeddingSubmission(Submission):
    def __init__(self, items: np.ndarray, sentences: np.ndarray, device: str):
        self.items, self.sentences, self.device = items, sentences, device

    def ranks(self, items, gt):
        sents = gt.sentence_range(items)
        i2t, t2i = ranks_from_embeddings(
            self.items[items],
            self.sentences[sents],
            gt.owner[sents] - items.start,
            device=self.device,
        )
        return Ranks.exact(i2t, sents.stop - sents.start), Ranks.exact(
            t2i, items.stop - items.start
        )


class RankingSubmission(Submission):
    def __init__(self, i2t: list[np.ndarray], t2i: list[np.ndarray]):
        self.i2t, self.t2i = i2t, t2i  # per catalog query, candidate catalog indices, best first

    @staticmethod
    def _direction(lists, queries: slice, cands: slice, is_right: Callable, num_right: np.ndarray):
        lo = np.empty(queries.stop - queries.start, dtype=np.int64)
        hi = np.empty_like(lo)
        lengths = []
        n_cands = cands.stop - cands.start
        for q in range(queries.start, queries.stop):
            lst = lists[q]
            lst = lst[(lst >= cands.start) & (lst < cands.stop)]
            hits = np.flatnonzero(is_right(q, lst))
            lengths.append(len(lst))
            if len(hits):
                lo[q - queries.start] = hi[q - queries.start] = hits[0]  # all ahead of it are wrong
            else:
                lo[q - queries.start] = len(lst)
                hi[q - queries.start] = n_cands - num_right[q - queries.start]
        return lo, hi, (min(lengths), max(lengths)) if lengths else None

    def ranks(self, items, gt):
        sents = gt.sentence_range(items)
        owner = gt.owner
        num_right_items = np.bincount(
            owner[sents] - items.start, minlength=items.stop - items.start
        )
        lo, hi, k = self._direction(
            self.i2t, items, sents, lambda q, lst: owner[lst] == q, num_right_items
        )
        i2t = Ranks(lo, hi, sents.stop - sents.start, k)
        lo, hi, k = self._direction(
            self.t2i,
            sents,
            items,
            lambda q, lst: lst == owner[q],
            np.ones(sents.stop - sents.start, dtype=np.int64),
        )
        t2i = Ranks(lo, hi, items.stop - items.start, k)
        return i2t, t2i


def _sentence_hint(gt: GroundTruth) -> Callable[[str], str]:
    def hint(s: str) -> str:
        item = s.rsplit("#", 1)[0] if "#" in s else None
        if item in gt.item_index and not gt.all_sentences:
            return " (a sentence of that item outside the protocol: evaluate with --all-sentences?)"
        return ""

    return hint


def _parse_rankings(rankings, gt: GroundTruth, where: str) -> RankingSubmission:
    if not isinstance(rankings, dict) or set(rankings) != {"i2t", "t2i"}:
        raise UsageError(f"{where}: 'rankings' must be an object with exactly 'i2t' and 't2i'")
    hint = _sentence_hint(gt)
    out = {}
    for direction, queries, cands, q_hint, c_hint in (
        ("i2t", gt.item_index, gt.sentence_index, lambda s: "", hint),
        ("t2i", gt.sentence_index, gt.item_index, hint, lambda s: ""),
    ):
        table = rankings[direction]
        here = f"{where}: rankings.{direction}"
        if not isinstance(table, dict):
            raise UsageError(f"{here}: must be an object mapping query ids to lists of ids")
        order = _check_id_set(list(table), queries, f"{here} keys", q_hint)
        need = min(MIN_RANKING_LENGTH, len(cands))
        lists: list = [None] * len(queries)
        for (qid, lst), q in zip(table.items(), order):
            if not isinstance(lst, list):
                raise UsageError(f"{here}[{qid!r}]: must be a list of ids")
            if len(lst) < need:
                raise UsageError(
                    f"{here}[{qid!r}]: {len(lst)} ids, a ranking needs at least the top {need}"
                )
            if len(lst) > len(cands):
                raise UsageError(
                    f"{here}[{qid!r}]: {len(lst)} ids, more than the {len(cands)} candidates"
                )
            idx = np.empty(len(lst), dtype=np.int64)
            for n, c in enumerate(lst):
                v = cands.get(c) if isinstance(c, str) else None
                if v is None:
                    raise UsageError(
                        f"{here}[{qid!r}][{n}]: unknown id {c!r}{c_hint(c) if isinstance(c, str) else ''}"
                    )
                idx[n] = v
            if len(np.unique(idx)) != len(idx):
                u, counts = np.unique(idx, return_counts=True)
                dup = lst[int(np.flatnonzero(idx == u[counts > 1][0])[1])]
                raise UsageError(f"{here}[{qid!r}]: duplicated id {dup!r}")
            lists[q] = idx
        out[direction] = lists
    return RankingSubmission(out["i2t"], out["t2i"])


def load_submission(
    preds: dict,
    base: Path,
    gt: GroundTruth,
    device: str,
    where: str,
    sentence_rows: np.ndarray | None = None,
    sentences_given: int | None = None,
) -> Submission:
    """Check the submission against the ground truth and return it ready to rank.

    `sentence_rows`: when items were left out (`evaluate_submission`), the rows of the
    submission's sentence arrays that belong to the items kept, in the order of its
    `sentence_ids` (which then lists only those), out of `sentences_given` rows."""
    if "rankings" in preds:
        for key in ("item_ids", "sentence_ids"):
            if key in preds:
                raise UsageError(
                    f"{where}: {key!r} orders arrays; 'rankings' name their ids already"
                )
        return _parse_rankings(preds["rankings"], gt, where)
    hint = _sentence_hint(gt)
    item_order = _id_order(preds, "item_ids", gt.item_ids, gt.item_index, where)
    sent_order = _id_order(preds, "sentence_ids", gt.sentence_ids, gt.sentence_index, where, hint)
    n, m = gt.num_items, gt.num_sentences
    m_given = m if sentence_rows is None else int(sentences_given)
    if "scores" in preds:
        p = _resolve(base, preds["scores"], f"{where}: scores")
        scores = _load_npy(p, f"{where}: scores")
        if scores.shape != (n, m_given):
            raise UsageError(
                f"{where}: scores: {p.name} has shape {list(scores.shape)}, expected "
                f"[{n}, {m_given}] (items x sentences of {gt.dataset}/{gt.split})"
            )
        if sentence_rows is not None:
            scores = scores[:, sentence_rows]
        _check_finite(
            scores,
            f"{where}: scores: {p.name}",
            lambda pos: (
                f"item {gt.item_ids[item_order[pos[0]]]!r}, sentence {gt.sentence_ids[sent_order[pos[1]]]!r}"
            ),
        )
        rows = np.empty(n, dtype=np.int64)
        rows[item_order] = np.arange(n)
        cols = np.empty(m, dtype=np.int64)
        cols[sent_order] = np.arange(m)
        return ScoreSubmission(scores, rows, cols)
    emb = preds["embeddings"]
    if not isinstance(emb, dict) or set(emb) != {"items", "sentences"}:
        raise UsageError(
            f"{where}: 'embeddings' must be an object with exactly 'items' and 'sentences'"
        )
    arrays = {}
    for key, count, order, ids in (
        ("items", n, item_order, gt.item_ids),
        ("sentences", m, sent_order, gt.sentence_ids),
    ):
        here = f"{where}: embeddings.{key}"
        p = _resolve(base, emb[key], here)
        arr = _load_npy(p, here)
        given = m_given if key == "sentences" else count
        if arr.ndim not in (2, 3) or arr.shape[0] != given or min(arr.shape) == 0:
            raise UsageError(
                f"{here}: {p.name} has shape {list(arr.shape)}, expected [{given}, D] "
                f"or [{given}, K, D] ({key} of {gt.dataset}/{gt.split})"
            )
        if key == "sentences" and sentence_rows is not None:
            arr = arr[sentence_rows]
        _check_finite(arr, f"{here}: {p.name}", lambda pos, o=order, i=ids: f"id {i[o[pos[0]]]!r}")
        # rows into catalog order (a copy: the arrays are read once, float32)
        inverse = np.empty(count, dtype=np.int64)
        inverse[order] = np.arange(count)
        arrays[key] = arr if np.array_equal(inverse, np.arange(count)) else arr[inverse]
    if arrays["items"].shape[-1] != arrays["sentences"].shape[-1]:
        raise UsageError(
            f"{where}: embeddings: items have dimension {arrays['items'].shape[-1]}, "
            f"sentences {arrays['sentences'].shape[-1]}"
        )
    return EmbeddingSubmission(
        _as_instances(arrays["items"]), _as_instances(arrays["sentences"]), device
    )


# -- the command -----------------------------------------------------------------------------
def choose_device(gpu: bool) -> str:
    if not gpu:
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        raise UsageError(
            "--gpu: CUDA is not available on this machine (drop --gpu to run on the CPU)"
        )
    return "cuda"


def failed_items(root, dataset: str, split: str) -> set[str]:
    """Ids that a stage of the split recorded as failed (download, frames or any features)."""
    from mrw.shards import read_status, status_shards

    stages = [paths.videos_dir(root, dataset, split), paths.frames_dir(root, dataset, split)]
    stages += paths.features_dirs(root, dataset, split)
    failed: set[str] = set()
    for stage in stages:
        if status_shards(stage):
            status = read_status(stage)
            failed.update(
                i
                for i, st in zip(
                    status.column("id").to_pylist(), status.column("status").to_pylist()
                )
                if st == "failed"
            )
    return failed


def _item_of(sentence_id) -> str | None:
    return sentence_id.rsplit("#", 1)[0] if isinstance(sentence_id, str) else None


def _submitted_items(preds: dict) -> list | None:
    """The item ids the submission names, when it names them (None: every item, in order)."""
    if "rankings" in preds:
        rankings = preds["rankings"]
        table = rankings.get("i2t") if isinstance(rankings, dict) else None
        return list(table) if isinstance(table, dict) else None
    ids = preds.get("item_ids")
    return ids if isinstance(ids, list) and all(isinstance(i, str) for i in ids) else None


def _leave_out_missing(preds: dict, gt: GroundTruth, root, allow_missing: bool, where: str):
    """Items of the split that the submission lacks are left out of the evaluation when the
    pipeline failed on them (a dead link, a clip that does not decode: no method could rank
    them), or anyway with `allow_missing`; any other gap is an error.

    Returns (ground truth of the items evaluated, preds without the left-out items' sentences,
    coverage or None, rows of the submission's sentence arrays kept or None, their count)."""
    ids = _submitted_items(preds)
    if ids is None:
        return gt, preds, None, None, None
    given = set(ids)
    keep = np.fromiter((i in given for i in gt.item_ids), dtype=bool, count=gt.num_items)
    if keep.all() or not keep.any() or any(i not in gt.item_index for i in given):
        return gt, preds, None, None, None  # complete, or ids amiss: the checks will say which
    missing = [i for i, k in zip(gt.item_ids, keep) if not k]
    if not allow_missing:
        failed = failed_items(root, gt.dataset, gt.split)
        unexplained = [i for i in missing if i not in failed]
        if unexplained:
            label = "rankings.i2t keys" if "rankings" in preds else "item_ids"
            raise UsageError(
                f"{where}: {label}: {len(missing)} id(s) of the split missing, e.g. {unexplained[0]!r}; "
                f"{len(unexplained)} of them did not fail in any stage under this root "
                "(--allow-missing evaluates the submitted items alone)"
            )
    gone = set(missing)
    coverage = {
        "catalog_items": gt.num_items,
        "evaluated_items": int(keep.sum()),
        "left_out": len(missing),
        "left_out_ids": missing[:20],
        "why": "allowed (--allow-missing)"
        if allow_missing
        else "failed in the pipeline (their status rows say so)",
    }
    preds = dict(preds)
    rows = count = None
    if "rankings" in preds and isinstance(preds["rankings"], dict):
        rankings = dict(preds["rankings"])
        if isinstance(rankings.get("t2i"), dict):
            rankings["t2i"] = {
                q: [c for c in lst if c not in gone] if isinstance(lst, list) else lst
                for q, lst in rankings["t2i"].items()
                if _item_of(q) not in gone
            }
        if isinstance(rankings.get("i2t"), dict):
            rankings["i2t"] = {
                q: [c for c in lst if _item_of(c) not in gone] if isinstance(lst, list) else lst
                for q, lst in rankings["i2t"].items()
            }
        preds["rankings"] = rankings
    elif isinstance(preds.get("sentence_ids"), list):
        sids = preds["sentence_ids"]
        rows = np.array(
            [n for n, sid in enumerate(sids) if _item_of(sid) not in gone], dtype=np.int64
        )
        count = len(sids)
        preds["sentence_ids"] = [sids[n] for n in rows]
    return gt.subset(keep), preds, coverage, rows, count


def evaluate_submission(
    preds_path,
    root=None,
    dataset: str | None = None,
    gpu: bool = False,
    all_sentences: bool = False,
    allow_missing: bool = False,
) -> tuple[dict, dict]:
    """(results JSON, curves) for a `preds.json`; raises UsageError on any bad input.

    `curves` maps protocol -> direction -> `Ranks` of the whole set, for plots. Items the
    submission lacks are left out when the pipeline failed on them (or with `allow_missing`),
    and `results["coverage"]` says how many.
    """
    preds_path = Path(preds_path)
    preds = read_preds(preds_path)
    where = preds_path.name
    if dataset is not None and paths.check_dataset(dataset) != preds["dataset"]:
        raise UsageError(
            f"{where}: the submission is for dataset {preds['dataset']!r}, "
            f"but --dataset {dataset} was given"
        )
    device = choose_device(gpu)
    gt = load_ground_truth(root, preds["dataset"], preds["split"], all_sentences)
    gt, preds, coverage, rows, count = _leave_out_missing(preds, gt, root, allow_missing, where)
    submission = load_submission(preds, preds_path.parent, gt, device, where, rows, count)
    results = {
        "dataset": gt.dataset,
        "split": gt.split,
        "model": preds.get("model", preds_path.stem),
        "sentences": "all" if all_sentences else "protocol",
        "num_items": gt.num_items,
        "num_sentences": gt.num_sentences,
        "input": next(k for k in KINDS if k in preds),
        "protocols": {},
    }
    if coverage is not None:
        results["coverage"] = coverage
    curves = {}
    for name, folds in gt.protocols().items():
        ranked = [submission.ranks(f, gt) for f in folds]
        results["protocols"][name] = protocol_metrics(ranked)
        if len(folds) == 1:
            curves[name] = dict(zip(DIRECTIONS, ranked[0]))
    return results, curves


def check_output_path(path, suffixes: Sequence[str], option: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder, expected a file name")
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"{option} {path}: expected a {' or '.join(suffixes)} file name")
    return path


def run_evaluate(
    preds_path,
    root=None,
    dataset=None,
    json_out=None,
    leaderboard=False,
    plot=None,
    gpu=False,
    all_sentences=False,
    allow_missing=False,
    echo: Callable[[str], None] = print,
) -> dict:
    """What `mrw evaluate` does: evaluate, print the table, then write the asked outputs."""
    if json_out is not None:
        json_out = check_output_path(json_out, (".json",), "--json")
    if plot is not None:
        plot = check_output_path(plot, (".png",), "--plot")
    results, curves = evaluate_submission(
        preds_path, root, dataset, gpu, all_sentences, allow_missing
    )
    board = load_leaderboard(results["dataset"]) if (leaderboard or plot) else None
    echo(format_results(results))
    if leaderboard:
        echo("")
        echo(format_leaderboard(results, board))
    if json_out is not None:
        from mrw.shards import write_json_atomic

        write_json_atomic(results, json_out)
    if plot is not None:
        plot_recall_curves(results, curves, board, plot)
    return results


# -- presentation ----------------------------------------------------------------------------
def _fmt(value, metric: str) -> str:
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
            f"items: {cov['left_out']} left out, {cov['why']}; scores on a smaller set "
            "are not strictly comparable with published ones"
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


def format_leaderboard(results: dict, board: dict) -> str:
    lines = []
    for name, proto in results["protocols"].items():
        rows = [dict(e, mine=False) for e in board["entries"] if e["protocol"] == name]
        rows.append(
            {
                "model": f"{results['model']} (this submission)",
                "protocol": name,
                "i2t": proto["i2t"],
                "t2i": proto["t2i"],
                "rsum": proto["rsum"],
                "mine": True,
                "source": {"short": "this run"},
            }
        )
        rows.sort(key=lambda r: -(r["rsum"] if r["rsum"] is not None else -np.inf))
        lines.append(f"leaderboard {results['dataset']} {name}, ranked by rsum")
        header = (
            f"{'#':>3}  {'model':<36}{'rsum':>8}  |"
            + "".join(f"{'i2t ' + m:>10}" for m in ("R@1", "R@5", "R@10", "MedR"))
            + "  |"
            + "".join(f"{'t2i ' + m:>10}" for m in ("R@1", "R@5", "R@10", "MedR"))
            + "  source"
        )
        lines += [header, "-" * len(header)]
        for n, r in enumerate(rows, 1):
            cells = "".join(
                f"{_fmt(r['i2t'].get(m), m):>10}" for m in ("R@1", "R@5", "R@10", "MedR")
            )
            cells2 = "".join(
                f"{_fmt(r['t2i'].get(m), m):>10}" for m in ("R@1", "R@5", "R@10", "MedR")
            )
            mark = ">" if r["mine"] else " "
            lines.append(
                f"{n:>3}{mark} {r['model'][:36]:<36}{_fmt(r['rsum'], 'rsum'):>8}  |{cells}  |{cells2}  "
                f"{r['source'].get('short', '')}"
            )
        lines.append("")
    for key in ("note", "missing"):
        if board.get(key):
            lines.append(f"{key}: {board[key]}")
    return "\n".join(lines).rstrip()


def plot_recall_curves(results: dict, curves: dict, board: dict | None, out: Path):
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
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}.{os.getpid()}"
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
        plt.close(fig)
    return fig
