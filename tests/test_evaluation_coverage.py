"""Comparable or not, per protocol: only a submission on exactly the published test set is ranked
among the published rows; any other stands apart on the leaderboard, with the reason."""

import json

import numpy as np
from click.testing import CliRunner
from test_evaluation_scoring import write_preds, write_split

from mrw.cli import main
from mrw.evaluate import evaluate_submission


def related(n, per_item=1, d=8, seed=0):
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n, d)).astype(np.float32)
    owner = np.repeat(np.arange(n), per_item)
    return items, (items[owner] + 0.3 * rng.standard_normal((len(owner), d))).astype(np.float32)


def leaderboard(root, preds, *extra):
    result = CliRunner().invoke(
        main, ["evaluate", "--root", str(root), str(preds), "--leaderboard", *extra]
    )
    assert result.exit_code == 0, result.output
    return result.output


def ranked_rows(block: str) -> list[str]:
    return [line for line in block.splitlines() if line[:3].strip().isdigit()]


def test_complete_mrw_test_submission_is_comparable_and_ranked(root, tmp_path):
    write_split(root, "mrw", 5000, 1)
    preds = write_preds(tmp_path, "mrw", "embeddings", related(5000))
    res, _ = evaluate_submission(preds, root=root)
    full = res["protocols"]["full"]
    assert full["comparable"] is True and "not_comparable_because" not in full
    out = leaderboard(root, preds)
    rows = ranked_rows(out.split("leaderboard mrw full")[1])
    assert len(rows) == 3 and any(">" in r[:4] and "this submission" in r for r in rows)
    assert "not ranked" not in out and "not comparable" not in out


def test_demo_sized_submission_is_not_comparable_and_stands_apart(root, tmp_path):
    write_split(root, "mrw", 60, 1)
    preds = write_preds(tmp_path, "mrw", "embeddings", related(60))
    res, _ = evaluate_submission(preds, root=root)
    full = res["protocols"]["full"]
    assert full["comparable"] is False
    assert full["not_comparable_because"] == "60 of the published 5,000 test items"
    assert full["rsum"] > 4.04  # better than PVSE's published rsum, and still not ranked above it
    out = leaderboard(root, preds)
    block = out.split("leaderboard mrw full")[1]
    rows = ranked_rows(block)
    assert len(rows) == 2 and rows[0].startswith("  1  PVSE ")
    assert all("this submission" not in r for r in rows)
    lines = block.splitlines()
    apart = next(n for n, line in enumerate(lines) if line.startswith("not ranked"))
    assert "60 of the published 5,000 test items" in lines[apart]
    assert lines[apart + 1].startswith("  -> test embeddings (this submission)")
    assert "full: not comparable with the published results: 60 of the published" in out


def test_a_300_item_split_and_the_val_split_are_not_comparable(root, tmp_path):
    write_split(root, "mrw", 300, 1)
    res, _ = evaluate_submission(
        write_preds(tmp_path / "t", "mrw", "embeddings", related(300)), root=root
    )
    assert res["protocols"]["full"]["comparable"] is False
    assert res["protocols"]["full"]["not_comparable_because"] == (
        "300 of the published 5,000 test items"
    )
    write_split(root, "mrw", 1000, 1, split="val")
    preds = write_preds(tmp_path / "v", "mrw", "embeddings", related(1000))
    obj = json.loads(preds.read_text())
    preds.write_text(json.dumps({**obj, "split": "val"}))
    res, _ = evaluate_submission(preds, root=root)
    assert res["protocols"]["full"]["not_comparable_because"] == (
        "the val split; the published results are on test"
    )


def test_allow_missing_gaps_are_not_comparable(root, tmp_path):
    ids = write_split(root, "mrw", 5000, 1)
    items, sents = related(5000)
    keep = np.ones(5000, dtype=bool)
    keep[[3, 70, 4999, *range(100, 109)]] = False
    preds = write_preds(
        tmp_path,
        "mrw",
        "embeddings",
        (items[keep], sents[keep]),
        item_ids=[i for i, k in zip(ids, keep) if k],
        sentence_ids=[f"{i}#0" for i, k in zip(ids, keep) if k],
    )
    res, _ = evaluate_submission(preds, root=root, allow_missing=True)
    full = res["protocols"]["full"]
    assert res["coverage"]["left_out"] == 12
    assert full["comparable"] is False
    assert full["not_comparable_because"] == "12 items missing (--allow-missing)"
    out = leaderboard(root, preds, "--allow-missing")
    assert "because 12 items missing (--allow-missing)" in out
    assert all("this submission" not in r for r in ranked_rows(out))


def test_all_sentences_are_not_the_protocol(root, tmp_path):
    write_split(root, "mrw", 5000, 1)
    res, _ = evaluate_submission(
        write_preds(tmp_path, "mrw", "embeddings", related(5000)), root=root, all_sentences=True
    )
    assert res["protocols"]["full"]["not_comparable_because"] == (
        "all sentences instead of the protocol's"
    )


def test_coco_per_protocol(root, tmp_path):
    write_split(root, "coco", 5000, 5)
    res, _ = evaluate_submission(
        write_preds(tmp_path / "a", "coco", "embeddings", related(5000, 5)), root=root
    )
    assert res["protocols"]["5k"]["comparable"] is True
    assert res["protocols"]["1k"]["comparable"] is True
    write_split(root, "coco", 3000, 5)
    res, _ = evaluate_submission(
        write_preds(tmp_path / "b", "coco", "embeddings", related(3000, 5)), root=root
    )
    assert res["protocols"]["5k"]["not_comparable_because"] == (
        "3,000 of the published 5,000 test items"
    )
    assert res["protocols"]["1k"]["not_comparable_because"] == (
        "3,000 of the published 5,000 test items; 3 folds of 1,000 instead of 5"
    )
