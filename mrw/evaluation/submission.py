"""`preds.json`: reading it safely, checking it against the ground truth, and ranking from it."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, NoReturn

import numpy as np

from mrw import paths
from mrw.errors import UsageError
from mrw.evaluation.groundtruth import GroundTruth
from mrw.evaluation.protocol import Ranks
from mrw.evaluation.scoring import (
    DEFAULT_BLOCK_BYTES,
    RankCounter,
    as_instances,
    ranks_from_embeddings,
)

MIN_RANKING_LENGTH = 10
KINDS = ("rankings", "scores", "embeddings")
TOP_LEVEL_KEYS = {"dataset", "split", "model", "item_ids", "sentence_ids", *KINDS}
MAX_MODEL_CHARS = 200
MAX_STRING_BYTES = 4096  # ids, paths and model names are far shorter
MAX_INTEGER_DIGITS = 100
SCAN_CHUNK_BYTES = 8 * 2**20
# non-string runs and complete strings of at most MAX_STRING_BYTES characters, possessively
_SHORT_TOKENS = re.compile(
    rb'(?:[^"]++|"[^"\\]{0,%d}+"|"(?:[^"\\]|\\.){0,%d}+")*+' % (MAX_STRING_BYTES, MAX_STRING_BYTES)
)


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise _DuplicateKey(k)
        seen[k] = v
    return seen


def _scan_long_strings(path: Path) -> None:
    """Refuse a string literal longer than any id, path or name before decoding the file.

    Read in bounded chunks, so that a huge string costs no memory (json would hold it three
    times: the bytes, the text, the value); the regular expression consumes everything up to the
    first string it cannot close within MAX_STRING_BYTES."""
    carry = b""
    offset = 0  # file position of data[0]
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(SCAN_CHUNK_BYTES)
            data = carry + chunk
            tokens = _SHORT_TOKENS.match(data)
            assert tokens is not None  # the pattern matches the empty string too
            end = tokens.end()
            if end == len(data):
                carry = b""
            elif len(data) - end > MAX_STRING_BYTES + 2 or not chunk:
                if not chunk and len(data) - end <= MAX_STRING_BYTES + 2:
                    return  # an unterminated string: json says where
                before = data[max(0, end - 40) : end]
                what = "'model'" if re.search(rb'"model"\s*:\s*$', before) else "a string"
                raise UsageError(
                    f"{path}: {what} at byte {offset + end} is longer than {MAX_STRING_BYTES} "
                    f"bytes (ids, paths and the model name are short; at most {MAX_MODEL_CHARS} "
                    "characters for 'model')"
                )
            else:
                carry = data[end:]
            if not chunk:
                return
            offset += len(data) - len(carry)


def _short(value: object) -> str:
    """A value for a message: its repr, cut short (it may be huge)."""
    text = type(value).__name__ if isinstance(value, (list, dict)) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise _BadNumber(f"an integer literal of {len(text.lstrip('-'))} digits")
    return int(text)


def _lone_surrogate(text: str) -> int | None:
    """Position of the first character that is no Unicode scalar value (a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def _check_model(path: Path, model: object) -> None:
    if not isinstance(model, str):
        raise UsageError(f"{path}: 'model' must be a string, got {_short(model)}")
    if len(model) > MAX_MODEL_CHARS:
        raise UsageError(
            f"{path}: 'model' is {len(model):,} characters long, at most {MAX_MODEL_CHARS}"
        )
    bad = _lone_surrogate(model)
    if bad is not None:
        raise UsageError(
            f"{path}: 'model' holds a lone surrogate ({model[bad]!r} at character {bad}), "
            "which is not text: write the name in UTF-8"
        )
    if not model.isprintable():
        raise UsageError(f"{path}: 'model' holds a control character (one line of text, please)")


def read_preds(path: str | os.PathLike[str]) -> dict:
    """The parsed `preds.json`, or one line saying what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    _scan_long_strings(path)
    try:
        obj = json.loads(
            path.read_bytes().decode("utf-8"),
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_reject_constant,
            parse_int=_parse_int,
        )
    except _DuplicateKey as e:
        raise UsageError(
            f"{path}: key {str(e.args[0])[:100]!r} appears twice in one JSON object (a duplicated id?)"
        ) from None
    except _BadConstant as e:
        raise UsageError(
            f"{path}: {e.args[0]} is not valid JSON (write numbers, or null)"
        ) from None
    except _BadNumber as e:
        raise UsageError(f"{path}: {e.args[0]}: no number in a preds.json is that long") from None
    except RecursionError:
        raise UsageError(
            f"{path}: JSON nested too deeply (a preds.json is 4 levels deep)"
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
            f"{path}: unknown key {_short(unknown[0])} (expected: {', '.join(sorted(TOP_LEVEL_KEYS))})"
        )
    for key in ("dataset", "split"):
        if key not in obj:
            raise UsageError(f"{path}: missing {key!r}")
        if not isinstance(obj[key], str):
            raise UsageError(f"{path}: {key!r} must be a string, got {_short(obj[key])}")
    if "model" in obj:
        _check_model(path, obj["model"])
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


class _BadNumber(Exception):
    pass


def _reject_constant(name: str) -> NoReturn:
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
            raise UsageError(f"{where}[{n}]: unknown id {_short(i)}{hint(i)}")
        if seen[c]:
            raise UsageError(f"{where}[{n}]: duplicated id {i!r}")
        seen[c] = True
        order[n] = c
    if not seen.all():
        missing = [i for i, c in index.items() if not seen[c]]
        raise UsageError(f"{where}: {len(missing)} id(s) of the split missing, e.g. {missing[0]!r}")
    return order


def _resolve(base: Path, value: object, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where}: must be a path (a string), got {_short(value)}")
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


def _row_id_namer(order: np.ndarray, ids: Sequence[str]) -> Callable[[tuple], str]:
    """Names the id of a bad value's row, for `_check_finite`."""
    return lambda pos: f"id {ids[order[pos[0]]]!r}"


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
            pos = (pos[0] + a, *pos[1:])
            value = chunk[(pos[0] - a, *pos[1:])]
            raise UsageError(f"{where}: {value} at {list(map(int, pos))} ({describe(pos)})")


class Submission:
    """One input kind, able to rank any fold of consecutive catalog items."""

    def ranks(self, items: slice, gt: GroundTruth) -> tuple[Ranks, Ranks]:
        raise NotImplementedError


class ScoreSubmission(Submission):
    @staticmethod
    def _real(a: np.ndarray) -> np.ndarray:
        """Scores as given, compared in float64."""
        return np.asarray(a).astype(np.float64, copy=False)

    def __init__(self, scores: np.ndarray, item_rows: np.ndarray, sentence_cols: np.ndarray):
        self.scores = scores  # memory-mapped, submission order
        self.item_rows = item_rows  # catalog item -> row
        self.sentence_cols = sentence_cols  # catalog sentence -> column

    def ranks(self, items: slice, gt: GroundTruth) -> tuple[Ranks, Ranks]:
        sents = gt.sentence_range(items)
        rows, cols = self.item_rows[items], self.sentence_cols[sents]
        owner = gt.owner[sents] - items.start
        col_sel = _as_slice(cols)
        n = items.stop - items.start
        right = self._real(self.scores[rows[owner], cols])
        counter = RankCounter(right, owner, n)
        step = max(1, DEFAULT_BLOCK_BYTES // max(1, len(cols) * 8))
        for a in range(0, n, step):
            r = slice(a, min(a + step, n))
            counter.add(r, slice(None), self._real(self.scores[_as_slice(rows[r])][:, col_sel]))
        i2t, t2i = counter.ranks()
        return Ranks.exact(i2t, len(cols)), Ranks.exact(t2i, n)


def _as_slice(index: np.ndarray) -> slice | np.ndarray:
    """A run of consecutive indices as a slice (a cheap view of a memory map), else the indices."""
    if len(index) and np.array_equal(index, np.arange(index[0], index[0] + len(index))):
        return slice(int(index[0]), int(index[0]) + len(index))
    return index


class EmbeddingSubmission(Submission):
    def __init__(self, items: np.ndarray, sentences: np.ndarray, device: str):
        self.items, self.sentences, self.device = items, sentences, device

    def ranks(self, items: slice, gt: GroundTruth) -> tuple[Ranks, Ranks]:
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
    def _direction(
        lists: list[np.ndarray],
        queries: slice,
        cands: slice,
        is_right: Callable[[int, np.ndarray], np.ndarray],
        num_right: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, tuple[int, int] | None]:
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

    def ranks(self, items: slice, gt: GroundTruth) -> tuple[Ranks, Ranks]:
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


def _parse_rankings(rankings: object, gt: GroundTruth, where: str) -> RankingSubmission:
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
                        f"{here}[{qid!r}][{n}]: unknown id {_short(c)}{c_hint(c) if isinstance(c, str) else ''}"
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
    if sentence_rows is None:
        m_given = m
    else:
        assert sentences_given is not None, "sentence_rows come with sentences_given"
        m_given = int(sentences_given)
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
        _check_finite(arr, f"{here}: {p.name}", _row_id_namer(order, ids))
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
        as_instances(arrays["items"]), as_instances(arrays["sentences"]), device
    )
