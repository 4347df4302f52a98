"""Tokenizer, vocabulary and collate (mrw.text)."""

import json
from pathlib import Path

import pytest
import torch

from mrw.catalog import write_catalog
from mrw.errors import UsageError
from mrw.text import (
    SPECIAL_TOKENS,
    Vocabulary,
    collate_features,
    collate_sentences,
    pad_sequences,
    split_sentences,
    word_tokenize,
)

TGIF_TSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "tgif" / "tgif-v1.0.part.tsv"

# line number (1-based) of the real TGIF sample -> the tokens NLTK's word_tokenize gives for the
# lower-cased sentence (written out by hand, Treebank conventions)
EXPECTED_TGIF_TOKENS = {
    1: ["a", "man", "is", "glaring", ",", "and", "someone", "with", "sunglasses", "appears", "."],
    29: ["some", "zombie", "are", "attacking", "a", "read", "head", "woman", ","],
    72: [
        "a",
        "man",
        "and",
        "a",
        "woman",
        "stare",
        "into",
        "each",
        "other",
        "'s",
        "eyes",
        "and",
        "talk",
    ],
    188: ["man", "dancing", "or", "rapping", "on", "street", ".", "has", "pink", "shoes"],
    613: [
        "two",
        "men",
        "are",
        "doing",
        "some",
        "other",
        "form",
        "of",
        "wrestling",
        ";",
        "one",
        "of",
        "them",
        "is",
        "stronger",
        "and",
        "easily",
        "pins",
        "the",
        "first",
        "guy",
        "down",
        ".",
    ],
    814: [
        "a",
        "pale",
        "white",
        "man",
        "straightens",
        "himself",
        "and",
        "then",
        "blinks",
        "at",
        "someone",
        "as",
        "if",
        "he",
        "does",
        "n't",
        "understand",
        "something",
        ".",
    ],
    905: ["a", "kitten", "is", "playing", "with", "a", "dog", "'s", "snout", "."],
    988: [
        "there",
        "'s",
        "three",
        "dancing",
        "men",
        "followed",
        "by",
        "a",
        "couple",
        "and",
        "the",
        "woman",
        "rejects",
        "him",
        ".",
    ],
    1526: [
        "one",
        "girl",
        "is",
        "talking",
        "and",
        "the",
        "other",
        "goes",
        "'",
        "snip-snip",
        "'",
        "with",
        "her",
        "fingers",
        ".",
    ],
    2058: [
        "a",
        "long-haired",
        "man",
        "in",
        "shiny",
        "trousers",
        "and",
        "an",
        "open",
        "shirt",
        "spins",
        "180",
        "degrees",
        ".",
    ],
    2204: ["a", "band", "hugging", "their", "fans", "when", "they", "'re", "meeting", "them"],
    3266: [
        "it",
        "is",
        "a",
        "black",
        "man",
        "being",
        "ignored",
        "by",
        "people",
        "with",
        "the",
        "time",
        "19:30",
    ],
}


@pytest.fixture(scope="module")
def tgif_sentences():
    if not TGIF_TSV.exists():
        pytest.skip(f"the TGIF sample is not at {TGIF_TSV}")
    with open(TGIF_TSV, encoding="utf-8") as fh:
        return [line.rstrip("\n").split("\t")[1] for line in fh]


@pytest.mark.parametrize("line", sorted(EXPECTED_TGIF_TOKENS))
def test_tokenizer_on_real_tgif_sentences(tgif_sentences, line):
    assert word_tokenize(tgif_sentences[line - 1]) == EXPECTED_TGIF_TOKENS[line]


def test_tokenizer_treebank_conventions():
    assert word_tokenize('He said "I can\'t go" and left...') == [
        "he",
        "said",
        "``",
        "i",
        "ca",
        "n't",
        "go",
        "''",
        "and",
        "left",
        "...",
    ]
    assert word_tokenize("I'm gonna pay $3.50 (or 1,000 yen)!") == [
        "i",
        "'m",
        "gon",
        "na",
        "pay",
        "$",
        "3.50",
        "(",
        "or",
        "1,000",
        "yen",
        ")",
        "!",
    ]
    assert word_tokenize("MRW my boss says it'll be fine; it won't.") == [
        "mrw",
        "my",
        "boss",
        "says",
        "it",
        "'ll",
        "be",
        "fine",
        ";",
        "it",
        "wo",
        "n't",
        ".",
    ]
    assert word_tokenize("Cannot.", lower=False) == ["Can", "not", "."]
    assert word_tokenize("") == []


def test_sentence_split_keeps_abbreviations():
    assert split_sentences("dr. who waves. a man nods.") == ["dr. who waves.", "a man nods."]
    assert split_sentences("the u.s. flag waves") == ["the u.s. flag waves"]
    assert word_tokenize("mr. smith waves. bye") == ["mr.", "smith", "waves", ".", "bye"]


def test_vocabulary_json_round_trip(tmp_path):
    vocab = Vocabulary.build(["A cat sits.", "a dog sits", "the cat's hat"], min_count=1)
    assert vocab.idx2word[:4] == list(SPECIAL_TOKENS) and vocab("<pad>") == 0
    # most frequent first, ties by spelling
    assert vocab.idx2word[4:] == ["a", "cat", "sits", "'s", ".", "dog", "hat", "the"]
    path = vocab.save(tmp_path / "vocab.json")
    data = json.loads(path.read_text())
    assert data["words"] == vocab.idx2word
    again = Vocabulary.load(path)
    assert again == vocab and again.word2idx == vocab.word2idx
    assert again.encode("A zebra sits") == [1, vocab("a"), vocab("<unk>"), vocab("sits"), 2]
    assert again.decode(again.encode("the cat sits")) == ["the", "cat", "sits"]


def test_vocabulary_min_count_and_bad_files(tmp_path):
    vocab = Vocabulary.build(["a cat", "a dog", "a cat"], min_count=2)
    assert vocab.idx2word[4:] == ["a", "cat"] and vocab("dog") == vocab("<unk>")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"words": ["a", "b"]}))
    with pytest.raises(UsageError, match=r"bad\.json"):
        Vocabulary.load(bad)
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        Vocabulary.load(bad)
    with pytest.raises(UsageError, match="no vocabulary file"):
        Vocabulary.load(tmp_path / "missing.json")


def test_vocabulary_from_split_catalog(tmp_path):
    rows = [
        {
            "id": "g1",
            "sentences": ["A dog runs.", "a dog jumps"],
            "url": None,
            "protocol_sentences": [1],
        },
        {"id": "g2", "sentences": ["a cat runs"], "url": None, "protocol_sentences": [0]},
    ]
    write_catalog(rows, tmp_path, "tgif", "train")
    everything = Vocabulary.from_split("tgif", "train", root=tmp_path)
    assert set(everything.idx2word[4:]) == {"a", "dog", "runs", ".", "jumps", "cat"}
    protocol = Vocabulary.from_split("tgif", "train", root=tmp_path, all_sentences=False)
    assert set(protocol.idx2word[4:]) == {"a", "dog", "jumps", "cat", "runs"}
    assert Vocabulary.from_split("tgif", "train", root=tmp_path, min_count=2).idx2word[4:] == [
        "a",
        "dog",
        "runs",
    ]


def test_collate_pads_and_returns_lengths():
    vocab = Vocabulary.build(["a cat sits on a mat"])
    tokens, lengths = collate_sentences(["a cat", "a cat sits on a mat"], vocab)
    assert tokens.dtype == torch.long and tokens.shape == (2, 8)
    assert lengths.tolist() == [4, 8]
    assert tokens[0, 4:].tolist() == [0, 0, 0, 0] and tokens[0, :4].tolist() == vocab.encode(
        "a cat"
    )
    padded, lens = pad_sequences([torch.ones(2, 3), torch.ones(5, 3)])
    assert padded.shape == (2, 5, 3) and lens.tolist() == [2, 5] and padded[0, 2:].abs().sum() == 0


def test_collate_features_batch():
    vocab = Vocabulary.build(["a cat", "a dog runs"])
    batch = [
        {"id": "x", "sentence": "a cat", "features": torch.full((3, 4), 1.0)},
        {"id": "y", "sentence": "a dog runs", "features": torch.full((5, 4), 2.0)},
    ]
    out = collate_features(batch, vocab)
    assert out["id"] == ["x", "y"]
    assert out["features"].shape == (2, 5, 4) and out["feature_lengths"].tolist() == [3, 5]
    assert out["features"][0, 3:].abs().sum() == 0 and out["features"][1].eq(2).all()
    assert out["tokens"].shape == (2, 5) and out["token_lengths"].tolist() == [4, 5]
    images = [
        {"id": str(i), "sentence": "a cat", "features": torch.rand(49, 4), "pooled": torch.rand(4)}
        for i in range(3)
    ]
    out = collate_features(images)
    assert out["features"].shape == (3, 49, 4) and out["pooled"].shape == (3, 4)
    assert out["feature_lengths"].tolist() == [49, 49, 49] and "tokens" not in out
    with pytest.raises(UsageError):
        collate_features([])


def test_build_vocab_command(tmp_path):
    from click.testing import CliRunner

    from mrw.cli import main

    rows = [
        {
            "id": "a",
            "sentences": ["MRW a cat sits", "a dog"],
            "url": None,
            "protocol_sentences": [0],
        },
        {"id": "b", "sentences": ["a cat runs"], "url": None, "protocol_sentences": [0]},
    ]
    write_catalog(rows, tmp_path, "tgif", "train")
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            *["build-vocab", "--root", str(tmp_path), "--dataset", "tgif"],
            *["--split", "train", "--min-count", "2"],
        ],
    )
    assert result.exit_code == 0, result.output
    written = Vocabulary.load(tmp_path / "tgif" / "vocab-train.json")
    assert written.idx2word == ["<pad>", "<start>", "<end>", "<unk>", "a", "cat"]
    out = tmp_path / "v.json"
    result = runner.invoke(
        main,
        [
            "build-vocab",
            "--root",
            str(tmp_path),
            "--dataset",
            "tgif",
            "--split",
            "train",
            "--protocol-only",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0 and "dog" not in Vocabulary.load(out)
    result = runner.invoke(main, ["build-vocab", "--root", str(tmp_path), "--split", "test"])
    assert result.exit_code == 2 and "mrw download --dataset mrw --split test" in result.output
    result = runner.invoke(
        main, ["build-vocab", "--root", str(tmp_path), "--dataset", "tgif", "--min-count", "0"]
    )
    assert result.exit_code == 2 and "--min-count" in result.output


# -- build-vocab --reference ---------------------------------------------------------------------
def _build_vocab(*args):
    from click.testing import CliRunner

    from mrw.cli import main

    return CliRunner().invoke(main, ["build-vocab", *(str(a) for a in args)])


def test_reference_vocabulary_of_mrw_applies_its_rewrites_in_order(tmp_path):
    def row(i, sentence):
        return {"id": i, "sentences": [sentence], "url": None, "protocol_sentences": [0]}

    write_catalog([row("1", "MRW when /r/funny hits r/all")], tmp_path, "mrw", "train")
    write_catalog(
        [row("2", "MFW /u/spez and u/me.. her/his well-known look")], tmp_path, "mrw", "val"
    )
    write_catalog([row("3", "MRW a cat-dog / funny")], tmp_path, "mrw", "test")
    result = _build_vocab("--root", tmp_path, "--dataset", "mrw", "--reference")
    assert result.exit_code == 0, result.output
    words = Vocabulary.load(tmp_path / "mrw" / "vocab-reference.json").idx2word
    # "r/" goes before "/": her/his -> hehis; first-occurrence order over train, val, test
    assert words[4:] == [
        *["mrw", "when", "funny", "hits", "all", "mfw", "spez", "and", "me", "hehis"],
        *["well", "known", "look", "a", "cat", "dog"],
    ]
    # the train split alone: most frequent first, no rewrites
    assert _build_vocab("--root", tmp_path, "--dataset", "mrw", "--split", "train").exit_code == 0
    train = Vocabulary.load(tmp_path / "mrw" / "vocab-train.json")
    assert "hits" in train and "mfw" not in train and "all" not in train
    assert _build_vocab("--root", tmp_path, "--reference", "--split", "val").exit_code == 2
    refused = _build_vocab("--root", tmp_path, "--reference", "--protocol-only")
    assert refused.exit_code == 2 and "--protocol-only" in refused.output
    empty = _build_vocab("--root", tmp_path / "empty", "--dataset", "tgif", "--reference")
    assert empty.exit_code == 2 and "mrw download --dataset tgif" in empty.output


def test_reference_vocabulary_of_the_real_tgif_sentences(tmp_path):
    """Every sentence of every split with a catalog (here val and test, the shared sample's),
    counted here from the release files themselves."""
    from conftest import SHARED_DATA
    from test_releases import _tgif_release

    tgif = SHARED_DATA / "tgif"
    if not tgif.is_dir():
        pytest.skip("shared TGIF data not present")
    root = tmp_path / "root"
    for split in ("val", "test"):
        from click.testing import CliRunner

        from mrw.cli import main

        args = ["download", "--root", root, "--dataset", "tgif", "--split", split]
        args += ["--metadata", _tgif_release(tmp_path / split), "--catalog-only"]
        made = CliRunner().invoke(main, [str(a) for a in args])
        assert made.exit_code == 0, made.output

    rows: dict[str, list[str]] = {}
    for line in (tgif / "tgif-v1.0.part.tsv").read_text(encoding="utf-8").splitlines():
        if line.strip():
            url, sentence = line.split("\t")[:2]
            rows.setdefault(url.strip().rsplit("/", 1)[-1].removesuffix(".gif"), []).append(
                sentence
            )
    expected: dict[str, None] = {}
    for split in ("val", "test"):
        for url in (tgif / "splits" / f"{split}.txt").read_text().split():
            for sentence in rows.get(url.rsplit("/", 1)[-1].removesuffix(".gif"), []):
                expected.update(dict.fromkeys(word_tokenize(sentence)))

    result = _build_vocab("--root", root, "--dataset", "tgif", "--reference")
    assert result.exit_code == 0, result.output
    assert "no catalog for train" in result.output
    assert f"vocabulary: {len(expected) + 4} entries" in result.output
    words = Vocabulary.load(root / "tgif" / "vocab-reference.json").idx2word
    assert words[4:] == list(expected) and len(expected) > 1000
