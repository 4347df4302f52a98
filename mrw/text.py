"""Sentences to token ids: the tokenizer, the vocabulary and the batch collate functions.

The reference code (yalesong/pvse) lower-cased each sentence and ran NLTK's `word_tokenize`
(Penn Treebank conventions: punctuation split off, `n't`/`'s`/`'ll` contractions as their own
tokens, double quotes as ``` `` ``` and `''`). `word_tokenize` here follows the same conventions
with a few regular expressions, so it needs neither NLTK nor its downloaded data. The vocabulary
is plain JSON (never pickle): `<pad>` = 0, `<start>` = 1, `<end>` = 2, `<unk>` = 3, then the
words of a split that occur at least `min_count` times, most frequent first.
`build_reference_vocabulary` builds the reference code's instead (every split, first-occurrence
order, its MRW rewrites): the words the authors' pretrained models know.

Typical use with `mrw.load_dataset(..., modality="features")`::

    vocab = Vocabulary.from_split("mrw", "train", root=root)
    vocab.save("mrw_vocab.json")
    loader = DataLoader(ds, batch_size=128, collate_fn=functools.partial(collate_features, vocab=vocab))
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from mrw.errors import UsageError

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)

# -- tokenizer ---------------------------------------------------------------------------------
# Each rule is (pattern, replacement); they run in order over one sentence, as in the Treebank
# tokenizer, and the result is split on whitespace.
_OPENING_QUOTES = [
    (re.compile(r"([«“‘„]|[`]+)"), r" \1 "),
    (re.compile(r'^"'), "``"),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r"([ (\[{<])(\"|'{2})"), r"\1 `` "),
    # an opening single quote before a word that is not a clitic: 'snip -> ' snip ('s stays)
    (re.compile(r"(?i)(?<!\w)(')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)"), r"\1 "),
]
_PUNCTUATION = [
    # the period that ends the sentence, even before closing brackets or quotes
    (re.compile(r"([^.])(\.)([\]\)}>\"'»”’ ]*)\s*$"), r"\1 \2 \3 "),
    # commas and colons, but not inside numbers (1,000 and 10:30 stay whole)
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.{2,}", re.UNICODE), r" \g<0> "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile("[\u2012-\u2015]"), r" \g<0> "),  # figure, en and em dashes
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r"[*]", re.UNICODE), r" \g<0> "),
    (re.compile(r"[\]\[(){}<>]"), r" \g<0> "),
    (re.compile(r"--"), r" -- "),
]
_CLOSING_QUOTES = [
    (re.compile(r"([»”’])"), r" \1 "),
    (re.compile(r"''"), " '' "),
    (re.compile(r'"'), " '' "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
]
# words the Treebank conventions split in two: cannot -> can not, gonna -> gon na, ...
_SPLIT_WORDS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\b(can)(not)\b",
        r"\b(d)('ye)\b",
        r"\b(gim)(me)\b",
        r"\b(gon)(na)\b",
        r"\b(got)(ta)\b",
        r"\b(lem)(me)\b",
        r"\b(more)('n)\b",
        r"\b(wan)(na)(?=\s)",
        r" ('t)(is)\b",
        r" ('t)(was)\b",
    )
]

# A period, ? or ! followed by a space ends a sentence (NLTK splits sentences before tokenizing,
# so every sentence's final period becomes a token), except after these abbreviations.
_ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "vs",
        "etc",
        "inc",
        "ltd",
        "co",
        "corp",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "no",
        "fig",
        "e.g",
        "i.e",
        "a.m",
        "p.m",
        "u.s",
        "u.k",
    ]
)
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=\S)")


def split_sentences(text: str) -> list[str]:
    """Split a text where a sentence ends: after `.`, `?` or `!` and a space, not after an abbreviation."""
    pieces, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        end = m.start()
        before = text[start:end]
        word = before.rsplit(None, 1)[-1] if before.strip() else ""
        core = word.rstrip(".!?\"')]").lstrip("\"'([").lower()
        if word.endswith(".") and (core in _ABBREVIATIONS or len(core) == 1 or "." in core):
            continue  # "dr. who", "j. smith", "u.s. army": not a sentence end
        pieces.append(text[start : m.end()].strip())
        start = m.end()
    tail = text[start:].strip()
    if tail:
        pieces.append(tail)
    return pieces


def _tokenize_sentence(text: str) -> list[str]:
    for pattern, repl in _OPENING_QUOTES:
        text = pattern.sub(repl, text)
    for pattern, repl in _PUNCTUATION:
        text = pattern.sub(repl, text)
    text = f" {text} "
    for pattern, repl in _CLOSING_QUOTES:
        text = pattern.sub(repl, text)
    for pattern in _SPLIT_WORDS:
        text = pattern.sub(r" \1 \2 ", text)
    return text.split()


def word_tokenize(sentence: str, lower: bool = True) -> list[str]:
    """Treebank-style tokens of a sentence, lower-cased as the reference code did.

    >>> word_tokenize("The cat doesn't like Bob's hat, really.")
    ['the', 'cat', 'does', "n't", 'like', 'bob', "'s", 'hat', ',', 'really', '.']
    """
    text = str(sentence)
    if lower:
        text = text.lower()
    return [tok for part in split_sentences(text) for tok in _tokenize_sentence(part)]


# -- vocabulary --------------------------------------------------------------------------------
class Vocabulary:
    """Words <-> ids. `vocab("word")` gives the id (`<unk>`'s for an unknown word)."""

    def __init__(self, words: Iterable[str] = ()):
        self.idx2word: list[str] = []
        self.word2idx: dict[str, int] = {}
        for w in SPECIAL_TOKENS:
            self.add_word(w)
        for w in words:
            self.add_word(w)

    def add_word(self, word: str) -> int:
        if word not in self.word2idx:
            self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)
        return self.word2idx[word]

    def __call__(self, word: str) -> int:
        return self.word2idx.get(word, self.word2idx[UNK])

    def __len__(self) -> int:
        return len(self.idx2word)

    def __contains__(self, word: object) -> bool:
        return word in self.word2idx

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.idx2word == other.idx2word

    @property
    def pad_id(self) -> int:
        return self.word2idx[PAD]

    def encode(self, sentence: str, add_start_end: bool = True) -> list[int]:
        """Token ids of a sentence: `<start>`, its words (`<unk>` if unknown), `<end>`."""
        ids = [self(tok) for tok in word_tokenize(sentence)]
        if add_start_end:
            ids = [self.word2idx[START], *ids, self.word2idx[END]]
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> list[str]:
        words = [self.idx2word[int(i)] for i in ids]
        return [w for w in words if not (skip_special and w in SPECIAL_TOKENS)]

    @classmethod
    def build(cls, sentences: Iterable[str], min_count: int = 1) -> Vocabulary:
        """Every token that occurs at least `min_count` times, most frequent first, ties by spelling."""
        counts = Counter(tok for s in sentences for tok in word_tokenize(s))
        words = sorted(
            (w for w, c in counts.items() if c >= min_count and w not in SPECIAL_TOKENS),
            key=lambda w: (-counts[w], w),
        )
        return cls(words)

    @classmethod
    def from_split(
        cls,
        dataset: str,
        split: str = "train",
        root: str | os.PathLike[str] | None = None,
        min_count: int = 1,
        all_sentences: bool = True,
    ) -> Vocabulary:
        """Build from a split's catalog: all its sentences (or only the protocol's ones).

        The reference code kept every word (`--threshold 0`); raise `min_count` to drop rare ones.
        """
        from mrw.catalog import read_catalog

        table = read_catalog(root, dataset, split, columns=["sentences", "protocol_sentences"])
        sentences = table.column("sentences").to_pylist()
        if not all_sentences:
            chosen = table.column("protocol_sentences").to_pylist()
            sentences = [[s[n] for n in ns] for s, ns in zip(sentences, chosen)]
        return cls.build((s for group in sentences for s in group), min_count=min_count)

    def to_json(self) -> dict:
        return {"format": "mrw-vocabulary", "version": 1, "words": list(self.idx2word)}

    @classmethod
    def from_json(cls, obj: dict, where: str = "vocabulary") -> Vocabulary:
        words = obj.get("words") if isinstance(obj, dict) else None
        if (
            not isinstance(words, list)
            or not all(isinstance(w, str) for w in words)
            or tuple(words[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS
            or len(set(words)) != len(words)
        ):
            raise UsageError(
                f"{where}: not an mrw vocabulary (expected a JSON object whose "
                f"'words' list starts with {', '.join(SPECIAL_TOKENS)}, no repeats)"
            )
        return cls(words[len(SPECIAL_TOKENS) :])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the vocabulary as JSON, atomically."""
        from mrw.shards import write_json_atomic

        write_json_atomic(self.to_json(), Path(path))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocabulary:
        path = Path(path)
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"no vocabulary file at {path}") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise UsageError(f"{path}: not valid JSON ({e})") from None
        return cls.from_json(obj, where=str(path))


# -- the reference's vocabulary (yalesong/pvse `vocab.py`) --------------------------------------
# MRW sentences lost these substrings, in this order, before counting (never when embedding)
_MRW_REFERENCE_REPLACEMENTS = (
    ("/r/", ""),
    ("r/", ""),
    ("/u/", ""),
    ("u/", ""),
    ("..", ""),
    ("/", " "),
    ("-", " "),
)
REFERENCE_SPLITS = ("train", "val", "test")


def reference_vocabulary_text(dataset: str, sentence: str) -> str:
    """A sentence as the reference's vocabulary builder counted it (case kept: `word_tokenize`
    lower-cases); only MRW's were rewritten, its subreddit and user names and its separators."""
    if dataset == "mrw":
        for old, new in _MRW_REFERENCE_REPLACEMENTS:
            sentence = sentence.replace(old, new)
    return sentence


def build_reference_vocabulary(
    dataset: str, root: str | os.PathLike[str] | None = None, min_count: int = 1
) -> tuple[Vocabulary, list[str]]:
    """The vocabulary the reference built: every sentence of every split, words in the order
    they first occur (splits train, val, test; catalog order within), no frequency cut unless
    `min_count` > 1. Returns it and the splits read; a split without a catalog is skipped."""
    from mrw import paths
    from mrw.catalog import read_catalog

    counts: Counter = Counter()  # keeps first-insertion order
    found = []
    for split in REFERENCE_SPLITS:
        if not paths.catalog_path(root, dataset, split).exists():
            continue
        found.append(split)
        table = read_catalog(root, dataset, split, columns=["sentences"])
        for group in table.column("sentences").to_pylist():
            for sentence in group:
                counts.update(word_tokenize(reference_vocabulary_text(dataset, sentence)))
    if not found:
        read_catalog(root, dataset, REFERENCE_SPLITS[0])  # raises, naming the command to run
    words = [w for w, c in counts.items() if c >= min_count and w not in SPECIAL_TOKENS]
    return Vocabulary(words), found


def build_vocabulary(
    root: str | os.PathLike[str] | None = None,
    dataset: str = "mrw",
    split: str = "train",
    out: str | os.PathLike[str] | None = None,
    min_count: int = 1,
    all_sentences: bool = True,
    reference: bool = False,
) -> tuple[Path, Vocabulary]:
    """`mrw build-vocab`: a split's vocabulary written as JSON (default `<root>/<ds>/vocab-<split>.json`);
    with `reference`, the reference's vocabulary of all splits (`vocab-reference.json`)."""
    from mrw import paths

    if min_count < 1:
        raise UsageError(f"--min-count must be at least 1, got {min_count}")
    if reference:
        if not all_sentences:
            raise UsageError("--reference counts every sentence: drop --protocol-only")
        vocab, splits = build_reference_vocabulary(dataset, root=root, min_count=min_count)
        missing = [s for s in REFERENCE_SPLITS if s not in splits]
        if missing:
            print(
                f"warning: no catalog for {', '.join(missing)}: the vocabulary counts "
                f"{', '.join(splits)} only (the reference counted every split)",
                file=sys.stderr,
            )
        name = "vocab-reference.json"
    else:
        vocab = Vocabulary.from_split(
            dataset, split, root=root, min_count=min_count, all_sentences=all_sentences
        )
        name = f"vocab-{paths.normalize_split(split)}.json"
    path = Path(out) if out else paths.dataset_dir(root, dataset) / name
    return vocab.save(path), vocab


# -- collate -----------------------------------------------------------------------------------
def pad_sequences(
    seqs: Sequence, pad_value: float = 0, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack sequences of different lengths along a new dim 0, padding at the end of dim 0.

    Returns `(padded [B, L, ...], lengths [B])`; sequences may be lists of ints or tensors.
    """
    tensors = [s if isinstance(s, torch.Tensor) else torch.as_tensor(s, dtype=dtype) for s in seqs]
    if not tensors:
        raise UsageError("cannot collate an empty batch")
    lengths = torch.tensor([t.shape[0] for t in tensors], dtype=torch.long)
    out = torch.full(
        (len(tensors), int(lengths.max()), *tensors[0].shape[1:]),
        pad_value,
        dtype=dtype or tensors[0].dtype,
    )
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out, lengths


def collate_sentences(
    sentences: Sequence[str], vocab: Vocabulary
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sentences -> (token ids [B, L] padded with `<pad>`, lengths [B] counting `<start>`/`<end>`)."""
    return pad_sequences(
        [vocab.encode(s) for s in sentences], pad_value=vocab.pad_id, dtype=torch.long
    )


def collate_features(batch: Sequence[dict], vocab: Vocabulary | None = None) -> dict:
    """Collate items of `load_dataset` into one batch, in the order given (no sorting).

    - `features` / `frames` tensors of different lengths are padded with zeros along time:
      `features` [B, T, D] with `feature_lengths` [B] (`frames`, `frame_lengths` alike);
      COCO's `features` [B, 49, D] and `pooled` [B, D] are stacked as they are;
    - with a vocabulary, `tokens` [B, L] (the item's `sentence`, padded with `<pad>` = 0) and
      `token_lengths` [B];
    - `id`, `sentence`, `sentences` and any other field become lists.
    """
    if not batch:
        raise UsageError("cannot collate an empty batch")
    out: dict = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if isinstance(values[0], torch.Tensor):
            if values[0].dim() >= 1 and len({v.shape for v in values}) > 1:
                out[key], lengths = pad_sequences(values)
            else:
                out[key] = torch.stack(values)
                lengths = torch.full(
                    (len(values),), values[0].shape[0] if values[0].dim() else 1, dtype=torch.long
                )
            if key in ("features", "frames"):
                out[f"{key[:-1]}_lengths"] = lengths
        else:
            out[key] = values
    if vocab is not None:
        out["tokens"], out["token_lengths"] = collate_sentences(
            [it["sentence"] for it in batch], vocab
        )
    return out
