"""Ranks from scores and from embeddings: float32 block products, float64 where they decide.

Every rank from embeddings equals the one the float64 protocol gives: the float32 products rank
every candidate whose score is provably on one side of the query's threshold, and the few within
the rounding bound of it are scored again in float64 (docs/evaluation.md, "Exact ranks").
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from numpy.typing import ArrayLike

from mrw.errors import UsageError

DEFAULT_BLOCK_BYTES = 64 * 2**20  # one block of K x K products; bounds the evaluator's memory
FLOAT32_UNIT_ROUNDOFF = 2.0**-24
FLOAT64_UNIT_ROUNDOFF = 2.0**-53
# covers the float64 rounding of the norms and of the bound itself (relative 2^-40 or less)
BOUND_SLACK = 1 + 2.0**-20
# flushed subnormals (DAZ/FTZ) cost at most this much per product term
SUBNORMAL_TERM = 2.0**-125


# -- ranks from a score matrix ----------------------------------------------------------------
def best_right_scores(right: np.ndarray, owner: np.ndarray, num_items: int) -> np.ndarray:
    """Per item, the best score among its own sentences (`right[j]` = score of j with its item)."""
    best = np.full(num_items, -np.inf, dtype=np.float64)
    np.maximum.at(best, owner, right.astype(np.float64))
    return best


class RankCounter:
    """Counts, for both directions at once, the candidates scoring >= each query's right answer.

    Feed it every (item, sentence) score exactly once, in blocks of rows.
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


# -- embeddings ----------------------------------------------------------------------------------
def as_instances(emb: np.ndarray) -> np.ndarray:
    """`[N, D]` -> `[N, 1, D]`, float32, C-contiguous."""
    emb = np.asarray(emb)
    if emb.ndim == 2:
        emb = emb[:, None, :]
    return np.ascontiguousarray(emb, dtype=np.float32)


def relative_dot_bound(dim: int) -> float:
    """g with |fl32(x.y) - fl64(x.y)| <= g ||x|| ||y|| (+ the subnormal term) for float32 x, y."""
    g32 = dim * FLOAT32_UNIT_ROUNDOFF
    if g32 >= 0.5:
        raise UsageError(f"embeddings: dimension {dim} is too large for float32 products")
    g64 = dim * FLOAT64_UNIT_ROUNDOFF
    return (g32 / (1 - g32) + g64 / (1 - g64)) * BOUND_SLACK


def max_norms(emb: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Per instance `[N, K, D]`, an upper bound of the largest Euclidean norm of its K embeddings.

    The squares are summed in float32 (fast), whose relative error is below gamma_D, and the
    bound widened by it; float64 rounding of the rest is within BOUND_SLACK."""
    dim = emb.shape[2]
    g32 = dim * FLOAT32_UNIT_ROUNDOFF / (1 - dim * FLOAT32_UNIT_ROUNDOFF)
    out = np.empty(emb.shape[0], dtype=np.float64)
    for a in range(0, emb.shape[0], chunk):
        x = emb[a : a + chunk]
        squares = np.einsum("nkd,nkd->nk", x, x).max(axis=1).astype(np.float64)
        out[a : a + chunk] = np.sqrt(squares / (1 - g32)) * BOUND_SLACK
    return out


def exact_pair_scores(
    items: np.ndarray, sentences: np.ndarray, rows: ArrayLike, cols: ArrayLike, chunk: int = 512
) -> np.ndarray:
    """float64 max over K x K of the dot products of pairs (items[rows[p]], sentences[cols[p]])."""
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    out = np.empty(len(rows), dtype=np.float64)
    for a in range(0, len(rows), chunk):
        x = items[rows[a : a + chunk]].astype(np.float64)  # [p, Ka, D]
        y = sentences[cols[a : a + chunk]].astype(np.float64)  # [p, Ks, D]
        out[a : a + chunk] = np.matmul(x, y.transpose(0, 2, 1)).reshape(len(x), -1).max(axis=1)
    return out


def float32_band(threshold: np.ndarray, error: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 (lo, hi) with lo <= threshold - error and hi >= threshold + error."""
    lo64, hi64 = threshold - error, threshold + error
    lo, hi = lo64.astype(np.float32), hi64.astype(np.float32)
    lo = np.where(lo.astype(np.float64) > lo64, np.nextafter(lo, np.float32(-np.inf)), lo)
    hi = np.where(hi.astype(np.float64) < hi64, np.nextafter(hi, np.float32(np.inf)), hi)
    return lo.astype(np.float32), hi.astype(np.float32)


class BlockScorer:
    """Max-over-K x K float32 dot products of a block of items against a range of sentences.

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
        self.items = as_instances(items)
        self.sentences = as_instances(sentences)
        self.ka, self.ks = self.items.shape[1], self.sentences.shape[1]
        self.num_sentences = self.sentences.shape[0]
        self.device = device
        # numpy on the CPU; torch on any other device (and on the CPU when asked, for tests)
        self.use_torch = device != "cpu" if use_torch is None else use_torch
        self._products = np.empty(0, dtype=np.float32)
        slabs = np.ascontiguousarray(self.sentences.transpose(1, 0, 2))  # [Ks, M, D]
        # a numpy array, or a tensor on `device` (torch is imported only when used)
        self.slabs: Any
        if not self.use_torch:
            self.slabs = slabs
        else:
            import torch

            # TF32 or half-precision reductions would void the float32 error bound
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
            self.torch = torch
            self.slabs = torch.from_numpy(slabs).to(device)

    def _buffer(self, size: int) -> np.ndarray:
        if self._products.size < size:
            self._products = np.empty(size, dtype=np.float32)
        return self._products[:size]

    def scores(self, rows: slice, cols: slice) -> np.ndarray:
        """float32 `[items in rows, sentences in cols]`, as a numpy array."""
        a = self.items[rows]
        b, m = a.shape[0], cols.stop - cols.start
        a2: Any = a.reshape(-1, a.shape[2])  # a tensor on `device` when use_torch
        if self.use_torch:  # a copy: the items may be a read-only memory map
            a2 = self.torch.tensor(a2, device=self.device)
        out: Any = None
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


def rows_per_block(ka: int, num_sentences: int, block_bytes: int) -> int:
    return max(1, block_bytes // max(1, ka * num_sentences * 4))


def check_finite_scores(block: np.ndarray) -> None:
    if not np.isfinite(block).all():
        raise UsageError(
            "embeddings: a dot product overflows float32 (scores are not finite); "
            "scale the embeddings down"
        )


def ranks_from_embeddings(
    items: np.ndarray,
    sentences: np.ndarray,
    owner: np.ndarray,
    device: str = "cpu",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    progress: Callable | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(i2t, t2i) ranks from embeddings `[N(,K),D]`; `owner` must be sorted (catalog order).

    The ranks the float64 protocol gives, from one pass of float32 products in row blocks shared
    by both directions: a candidate counts at once when its float32 score exceeds the query's
    float64 threshold by more than the rounding bound, is dropped when below it by more, and is
    scored again in float64 in between.
    """
    owner = np.asarray(owner, dtype=np.int64)
    if len(owner) and np.any(np.diff(owner) < 0):
        raise ValueError("ranks_from_embeddings needs the sentences grouped by item, in item order")
    scorer = BlockScorer(items, sentences, device)
    its, sents = scorer.items, scorer.sentences
    n, m = its.shape[0], scorer.num_sentences
    cols_all = np.arange(m)

    # thresholds in float64: each sentence with its item, and each item's best sentence
    right = exact_pair_scores(its, sents, owner, cols_all)
    best = best_right_scores(right, owner, n)
    g = relative_dot_bound(its.shape[2])
    norm_i, norm_s = max_norms(its), max_norms(sents)
    top_i, top_s = float(norm_i.max(initial=0.0)), float(norm_s.max(initial=0.0))
    tiny = SUBNORMAL_TERM * its.shape[2]
    row_lo, row_hi = float32_band(best, g * norm_i * top_s + tiny * (1 + norm_i + top_s))
    col_lo, col_hi = float32_band(right, g * norm_s * top_i + tiny * (1 + norm_s + top_i))

    i2t = np.zeros(n, dtype=np.int64)
    t2i = np.zeros(m, dtype=np.int64)
    starts = np.searchsorted(owner, np.arange(n + 1))  # sentences of item i: starts[i]:starts[i+1]
    step = rows_per_block(scorer.ka, m, block_bytes)
    for a in range(0, n, step):
        rows = slice(a, min(a + step, n))
        block = scorer.scores(rows, slice(0, m))
        check_finite_scores(block)
        above_row = block > row_hi[rows, None]
        above_col = block > col_hi[None, :]
        i2t[rows] += np.count_nonzero(above_row, axis=1)
        t2i += np.count_nonzero(above_col, axis=0)
        band_row = block >= row_lo[rows, None]
        band_row &= ~above_row
        band_col = block >= col_lo[None, :]
        band_col &= ~above_col
        # right pairs are never wrong candidates
        own = slice(int(starts[rows.start]), int(starts[rows.stop]))
        band_row[owner[own] - a, cols_all[own]] = False
        band_col[owner[own] - a, cols_all[own]] = False
        pr, pc = np.nonzero(band_row | band_col)
        if len(pr):
            exact = exact_pair_scores(its, sents, pr + a, pc)
            hit_row = band_row[pr, pc] & (exact >= best[pr + a])
            hit_col = band_col[pr, pc] & (exact >= right[pc])
            i2t[rows] += np.bincount(pr[hit_row], minlength=rows.stop - a)
            t2i += np.bincount(pc[hit_col], minlength=m)
        if progress:
            progress(rows.stop - rows.start)
    return i2t, t2i
