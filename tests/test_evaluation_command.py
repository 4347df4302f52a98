"""`mrw evaluate` on the command line: bad input exits 2 with one precise line and writes nothing;
good input prints the table, the leaderboard, the results JSON and a real PNG plot."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from mrw.catalog import write_catalog
from mrw.cli import main
from mrw.evaluate import evaluate_submission, load_leaderboard, plot_recall_curves

N = 40


@pytest.fixture
def split(root):
    rows = [
        {
            "id": f"v{i:03d}",
            "sentences": [f"mrw when {i}"],
            "url": f"http://127.0.0.1/{i}.mp4",
            "protocol_sentences": [0],
        }
        for i in range(N)
    ]
    write_catalog(rows, root, "mrw", "test")
    return [r["id"] for r in rows]


@pytest.fixture
def coco_split(root):
    rows = [
        {
            "id": str(100 + i),
            "sentences": [f"a cat {i}.{c}" for c in range(6 if i == 0 else 5)],
            "url": None,
            "protocol_sentences": list(range(5)),
            "cocoid": 100 + i,
            "filepath": "val2014",
            "filename": f"{i}.jpg",
        }
        for i in range(N)
    ]
    write_catalog(rows, root, "coco", "test")
    return [r["id"] for r in rows]


def embeddings(n=N, seed=0, k=2, d=8):
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n, k, d)).astype(np.float32)
    return items, (items + 0.8 * rng.standard_normal((n, k, d))).astype(np.float32)


def write(folder, obj, arrays=None, name="preds.json"):
    folder.mkdir(parents=True, exist_ok=True)
    for fname, arr in (arrays or {}).items():
        np.save(folder / fname, arr)
    path = folder / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def good_preds(folder, **changes):
    items, sents = embeddings()
    obj = {
        "dataset": "mrw",
        "split": "test",
        "model": "mine",
        "embeddings": {"items": "items.npy", "sentences": "sentences.npy"},
        **changes,
    }
    return write(folder, obj, {"items.npy": items, "sentences.npy": sents})


def run(root, *args):
    return CliRunner().invoke(main, ["evaluate", "--root", str(root), *map(str, args)])


def assert_usage_error(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mrw: error: "), result.output
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert "Traceback" not in result.output


def run_bad(root, tmp_path, preds, *fragments, extra=()):
    out_json, out_png = tmp_path / "out" / "results.json", tmp_path / "out" / "plot.png"
    result = run(
        root, preds, "--json-out", out_json, "--plot-out", out_png, "--leaderboard", *extra
    )
    assert_usage_error(result, *fragments)
    assert not out_json.exists() and not out_png.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    return result.output


# -- every bad input -> exit 2, one precise line, nothing written -----------------
def test_path_that_does_not_exist(root, tmp_path, split):
    run_bad(root, tmp_path, tmp_path / "nope.json", "nope.json", "no such file")


def test_malformed_json(root, tmp_path, split):
    p = write(tmp_path / "p", '{"dataset": "mrw", "split": "test",\n "scores": "s.npy",,}')
    run_bad(root, tmp_path, p, "preds.json", "not valid JSON", "line 2")


def test_top_level_not_an_object(root, tmp_path, split):
    run_bad(root, tmp_path, write(tmp_path / "p", "[1, 2]"), "must be a JSON object")


def test_unknown_dataset(root, tmp_path, split):
    run_bad(
        root, tmp_path, good_preds(tmp_path / "p", dataset="msrvtt"), "unknown dataset 'msrvtt'"
    )


def test_unknown_split(root, tmp_path, split):
    run_bad(root, tmp_path, good_preds(tmp_path / "p", split="dev"), "unknown split 'dev'")


def test_split_without_a_catalog(root, tmp_path, split):
    run_bad(
        root,
        tmp_path,
        good_preds(tmp_path / "p", split="val"),
        "no catalog for mrw/val",
        "mrw download",
    )


def test_dataset_option_that_contradicts_the_submission(root, tmp_path, split):
    run_bad(
        root,
        tmp_path,
        good_preds(tmp_path / "p"),
        "for dataset 'mrw'",
        "--dataset coco",
        extra=("--dataset", "coco"),
    )


def test_missing_input_kind_and_two_kinds(root, tmp_path, split):
    p = write(tmp_path / "a", {"dataset": "mrw", "split": "test"})
    run_bad(root, tmp_path, p, "exactly one of", "got none")
    p = good_preds(tmp_path / "b", scores="s.npy")
    run_bad(root, tmp_path, p, "exactly one of", "'scores', 'embeddings'")


def test_unknown_top_level_key(root, tmp_path, split):
    run_bad(root, tmp_path, good_preds(tmp_path / "p", embedding="x"), "unknown key 'embedding'")


def test_missing_id(root, tmp_path, split):
    ids = split[:-1]
    p = write(
        tmp_path / "p",
        {"dataset": "mrw", "split": "test", "scores": "s.npy", "item_ids": ids},
        {"s.npy": np.zeros((N - 1, N), np.float32)},
    )
    run_bad(
        root,
        tmp_path,
        p,
        "item_ids",
        "1 id(s) of the split missing",
        repr(split[-1]),
        "--allow-missing",
    )


def test_unknown_id(root, tmp_path, split):
    ids = [*split[:5], "zzz", *split[6:]]
    p = write(
        tmp_path / "p",
        {"dataset": "mrw", "split": "test", "scores": "s.npy", "item_ids": ids},
        {"s.npy": np.zeros((N, N), np.float32)},
    )
    run_bad(root, tmp_path, p, "item_ids[5]", "unknown id 'zzz'")


def test_duplicated_id(root, tmp_path, split):
    sids = [f"{i}#0" for i in split]
    sids[7] = sids[3]
    p = write(
        tmp_path / "p",
        {"dataset": "mrw", "split": "test", "scores": "s.npy", "sentence_ids": sids},
        {"s.npy": np.zeros((N, N), np.float32)},
    )
    run_bad(root, tmp_path, p, "sentence_ids[7]", f"duplicated id '{split[3]}#0'")


def test_sentence_outside_the_protocol_says_so(root, tmp_path, coco_split):
    sids = [f"{i}#{c}" for i in coco_split for c in range(5)]
    sids[0] = f"{coco_split[0]}#5"
    p = write(
        tmp_path / "p",
        {"dataset": "coco", "split": "test", "scores": "s.npy", "sentence_ids": sids},
        {"s.npy": np.zeros((N, 5 * N), np.float32)},
    )
    run_bad(root, tmp_path, p, f"unknown id '{coco_split[0]}#5'", "--all-sentences")


def test_duplicated_query_in_rankings(root, tmp_path, split):
    lst = ", ".join(f'"{i}#0"' for i in split[:10])
    text = (
        f'{{"dataset": "mrw", "split": "test", "rankings": {{"i2t": {{"{split[0]}": [{lst}], '
        f'"{split[0]}": [{lst}]}}, "t2i": {{}}}}}}'
    )
    run_bad(root, tmp_path, write(tmp_path / "p", text), f"key '{split[0]}' appears twice")


def test_unknown_and_repeated_candidates_in_a_ranking(root, tmp_path, split):
    sids = [f"{i}#0" for i in split]
    i2t = {i: sids[:10] for i in split}
    t2i = {s: split[:10] for s in sids}
    i2t[split[2]] = [*sids[:9], "v999#0"]
    p = write(
        tmp_path / "a", {"dataset": "mrw", "split": "test", "rankings": {"i2t": i2t, "t2i": t2i}}
    )
    run_bad(root, tmp_path, p, f"rankings.i2t['{split[2]}'][9]", "unknown id 'v999#0'")
    i2t[split[2]] = [*sids[:9], sids[4]]
    p = write(
        tmp_path / "b", {"dataset": "mrw", "split": "test", "rankings": {"i2t": i2t, "t2i": t2i}}
    )
    run_bad(root, tmp_path, p, f"rankings.i2t['{split[2]}']", f"duplicated id '{sids[4]}'")


def test_ranking_queries_missing(root, tmp_path, split):
    sids = [f"{i}#0" for i in split]
    i2t = {i: sids[:10] for i in split}
    t2i = {s: split[:10] for s in sids[1:]}
    p = write(
        tmp_path / "p", {"dataset": "mrw", "split": "test", "rankings": {"i2t": i2t, "t2i": t2i}}
    )
    run_bad(root, tmp_path, p, "rankings.t2i keys", "missing", repr(sids[0]))


def test_ranking_truncated_below_ten(root, tmp_path, split):
    sids = [f"{i}#0" for i in split]
    i2t = {i: sids[:10] for i in split}
    t2i = {s: split[:10] for s in sids}
    t2i[sids[6]] = split[:9]
    p = write(
        tmp_path / "p", {"dataset": "mrw", "split": "test", "rankings": {"i2t": i2t, "t2i": t2i}}
    )
    run_bad(root, tmp_path, p, f"rankings.t2i['{sids[6]}']", "9 ids", "at least the top 10")


def test_nan_score(root, tmp_path, split):
    s = np.random.default_rng(0).standard_normal((N, N)).astype(np.float32)
    s[12, 30] = np.nan
    p = write(tmp_path / "p", {"dataset": "mrw", "split": "test", "scores": "s.npy"}, {"s.npy": s})
    run_bad(
        root,
        tmp_path,
        p,
        "s.npy",
        "nan at [12, 30]",
        f"item '{split[12]}'",
        f"sentence '{split[30]}#0'",
    )


def test_infinite_embedding(root, tmp_path, split):
    items, sents = embeddings()
    sents[3, 1, 2] = -np.inf
    p = write(
        tmp_path / "p",
        {"dataset": "mrw", "split": "test", "embeddings": {"items": "i.npy", "sentences": "s.npy"}},
        {"i.npy": items, "s.npy": sents},
    )
    run_bad(root, tmp_path, p, "embeddings.sentences", "-inf at [3, 1, 2]", f"'{split[3]}#0'")


def test_score_shape_mismatch(root, tmp_path, split):
    p = write(
        tmp_path / "p",
        {"dataset": "mrw", "split": "test", "scores": "s.npy"},
        {"s.npy": np.zeros((N, N + 1), np.float32)},
    )
    run_bad(root, tmp_path, p, f"shape [{N}, {N + 1}]", f"expected [{N}, {N}]")


def test_embedding_shape_mismatches(root, tmp_path, split):
    items, sents = embeddings()
    p = write(
        tmp_path / "a",
        {"dataset": "mrw", "split": "test", "embeddings": {"items": "i.npy", "sentences": "s.npy"}},
        {"i.npy": items[:-1], "s.npy": sents},
    )
    run_bad(root, tmp_path, p, "embeddings.items", f"shape [{N - 1}, 2, 8]", f"expected [{N}, D]")
    p = write(
        tmp_path / "b",
        {"dataset": "mrw", "split": "test", "embeddings": {"items": "i.npy", "sentences": "s.npy"}},
        {"i.npy": items, "s.npy": sents[..., :4]},
    )
    run_bad(root, tmp_path, p, "items have dimension 8, sentences 4")


def test_referenced_array_that_does_not_exist(root, tmp_path, split):
    p = write(tmp_path / "p", {"dataset": "mrw", "split": "test", "scores": "missing.npy"})
    run_bad(root, tmp_path, p, "scores", "missing.npy: no such file")


def test_referenced_file_that_is_not_an_array(root, tmp_path, split):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "s.npy").write_text("hello")
    p = write(tmp_path / "p", {"dataset": "mrw", "split": "test", "scores": "s.npy"})
    run_bad(root, tmp_path, p, "s.npy: not a .npy array")


def test_output_names_are_checked_before_any_work(root, tmp_path, split):
    result = run(root, good_preds(tmp_path / "p"), "--plot-out", tmp_path / "curves.jpg")
    assert_usage_error(result, "--plot", "expected a .png")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_without_cuda(root, tmp_path, split):
    run_bad(
        root,
        tmp_path,
        good_preds(tmp_path / "p"),
        "--gpu",
        "CUDA is not available",
        extra=("--gpu",),
    )


# -- the happy path and bad outputs: table, results JSON, leaderboard, plot ---------------
def test_table_json_leaderboard_and_plot(root, tmp_path, split):
    out_json, out_png = tmp_path / "o" / "results.json", tmp_path / "o" / "recall.png"
    result = run(
        root,
        good_preds(tmp_path / "p"),
        "--json-out",
        out_json,
        "--leaderboard",
        "--plot-out",
        out_png,
    )
    assert result.exit_code == 0, result.output
    res = json.loads(out_json.read_text())
    assert {"dataset", "split", "model", "protocols"} <= set(res)
    assert (res["dataset"], res["split"], res["model"]) == ("mrw", "test", "mine")
    full = res["protocols"]["full"]
    assert set(full["i2t"]) == set(full["t2i"]) == {"R@1", "R@5", "R@10", "MedR", "MeanR", "nMR"}
    assert full["rsum"] == pytest.approx(
        sum(full[d][f"R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    )
    assert full["i2t"]["R@10"] > 50  # sentences are noisy copies of their items: well above chance

    out = result.output
    assert "i2t" in out and "t2i" in out and "rsum" in out and f"{full['i2t']['R@1']:.2f}" in out
    board = out[out.index("leaderboard mrw full") :].splitlines()
    ranked = [line for line in board if line[:3].strip().isdigit()]
    # 40 items are not the published test set: the submission stands apart, not ranked
    assert len(ranked) == 2 and all("this submission" not in line for line in ranked)
    assert full["comparable"] is False
    assert full["not_comparable_because"] == "40 of the published 5,000 test items"
    apart = board.index(next(line for line in board if line.startswith("not ranked")))
    assert apart > board.index(ranked[-1])
    assert "40 of the published 5,000 test items" in board[apart]
    assert board[apart + 1].startswith("  -> mine (this submission)")
    assert "PVSE (K=1)" in out and "yalesong/pvse README" in out

    with Image.open(out_png) as img:
        assert img.format == "PNG" and img.size == (1200, 450)


def test_plot_axes_and_published_points(root, tmp_path, split):
    res, curves = evaluate_submission(good_preds(tmp_path / "p"), root=root)
    fig = plot_recall_curves(res, curves, load_leaderboard("mrw"), tmp_path / "c.png")
    assert len(fig.axes) == 2
    for ax, d in zip(fig.axes, ("i2t", "t2i")):
        assert ax.get_xscale() == "log" and ax.get_xlim() == (1, N) and ax.get_ylim() == (0, 100)
        assert ax.get_ylabel() == "R@K (%)" and d in (
            "i2t" if "-> text" in ax.get_title() else "t2i"
        )
        mine, *published = ax.get_lines()
        x, y = mine.get_data()
        assert list(x) == list(range(1, N + 1)) and y[-1] == 100.0
        assert y[9] == pytest.approx(res["protocols"]["full"][d]["R@10"])
        assert [line.get_label() for line in published] == ["PVSE (K=1)", "PVSE"]
        assert list(published[1].get_data()[0]) == [1, 5, 10]
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_coco_leaderboard_has_both_protocols(root, tmp_path, coco_split):
    rng = np.random.default_rng(3)
    items = rng.standard_normal((N, 8)).astype(np.float32)
    sents = rng.standard_normal((5 * N, 8)).astype(np.float32)
    p = write(
        tmp_path / "p",
        {
            "dataset": "coco",
            "split": "test",
            "embeddings": {"items": "i.npy", "sentences": "s.npy"},
        },
        {"i.npy": items, "s.npy": sents},
    )
    result = run(root, p, "--leaderboard")
    assert result.exit_code == 0, result.output
    assert "leaderboard coco 5k" in result.output
    # 40 images: the published rows alone are ranked, the submission apart below them
    block = result.output.split("leaderboard coco 5k")[1]
    rows = [line for line in block.splitlines() if line[:3].strip().isdigit()]
    assert len(rows) == 2 and all(">" not in line[:4] for line in rows)
    assert "not ranked" in block and "  -> preds (this submission)" in block
    assert "40 of the published 5,000 test items" in block


def test_all_sentences_needs_every_sentence(root, tmp_path, coco_split):
    items = np.ones((N, 4), np.float32)
    p = write(
        tmp_path / "p",
        {
            "dataset": "coco",
            "split": "test",
            "embeddings": {"items": "i.npy", "sentences": "s.npy"},
        },
        {"i.npy": items, "s.npy": np.ones((5 * N, 4), np.float32)},
    )
    assert run(root, p).exit_code == 0
    run_bad(
        root,
        tmp_path,
        p,
        "embeddings.sentences",
        f"expected [{5 * N + 1}, D]",
        extra=("--all-sentences",),
    )


def test_nan_literal_in_json(root, tmp_path, split):
    p = write(
        tmp_path / "p", '{"dataset": "mrw", "split": "test", "model": NaN, "scores": "s.npy"}'
    )
    run_bad(root, tmp_path, p, "preds.json", "NaN is not valid JSON")


# -- items the pipeline failed on ------------------------------------------------------------
def _fail_downloads(root, ids, failed):
    from mrw import paths
    from mrw.shards import write_shard

    write_shard(
        paths.videos_dir(root, "mrw", "test"),
        0,
        None,
        [
            {
                "id": i,
                "url": None,
                "status": "failed" if i in failed else "ok",
                "error": "http_404: gone" if i in failed else None,
                "attempts": 1,
            }
            for i in ids
        ],
    )


@pytest.mark.parametrize("kind", ["embeddings", "scores", "rankings"])
def test_failed_items_are_left_out_and_said(root, tmp_path, split, kind):
    """A submission without the items whose download failed is evaluated on the rest, exactly as
    if the catalog held only those, and the results say how many were left out."""
    failed = {split[3], split[17], split[39]}
    _fail_downloads(root, split, failed)
    kept = [i for i in split if i not in failed]
    rows = [n for n, i in enumerate(split) if i not in failed]
    items, sents = embeddings()
    sids = [f"{i}#0" for i in split]  # every sentence, as `predict` writes them
    scores = np.einsum("ikd,jld->ijkl", items[rows], sents).max(axis=(2, 3)).astype(np.float32)
    if kind == "embeddings":
        obj = {
            "embeddings": {"items": "i.npy", "sentences": "s.npy"},
            "item_ids": kept,
            "sentence_ids": sids,
        }
        arrays = {"i.npy": items[rows], "s.npy": sents}
    elif kind == "scores":
        obj, arrays = {"scores": "x.npy", "item_ids": kept, "sentence_ids": sids}, {"x.npy": scores}
    else:
        order = lambda v: list(np.argsort(-v, kind="stable"))  # noqa: E731
        obj = {
            "rankings": {
                "i2t": {i: [sids[j] for j in order(scores[r])] for r, i in enumerate(kept)},
                "t2i": {s: [kept[r] for r in order(scores[:, j])] for j, s in enumerate(sids)},
            }
        }
        arrays = {}
    p = write(tmp_path / "p", {"dataset": "mrw", "split": "test", **obj}, arrays)
    result = run(root, p)
    assert result.exit_code == 0, result.output
    assert (
        "evaluated on 37 of the split's 40 items: 3 left out, failed in the pipeline"
        in result.output
    )
    got, _ = evaluate_submission(p, root=root)
    assert got["coverage"]["left_out"] == 3 and sorted(got["coverage"]["left_out_ids"]) == sorted(
        failed
    )
    assert got["num_items"] == got["num_sentences"] == 37

    # the same submission against a catalog that holds only the items kept
    small = tmp_path / "small"
    write_catalog(
        [
            {"id": i, "sentences": [f"mrw when {i}"], "url": None, "protocol_sentences": [0]}
            for i in kept
        ],
        small,
        "mrw",
        "test",
    )
    kept_sids = [f"{i}#0" for i in kept]
    if kind == "embeddings":
        ref = {**obj, "sentence_ids": kept_sids}
        ref_arrays = {"i.npy": items[rows], "s.npy": sents[rows]}
    elif kind == "scores":
        ref, ref_arrays = {**obj, "sentence_ids": kept_sids}, {"x.npy": scores[:, rows]}
    else:
        sub = scores[:, rows]
        ref = {
            "rankings": {
                "i2t": {i: [kept_sids[j] for j in order(sub[r])] for r, i in enumerate(kept)},
                "t2i": {s: [kept[r] for r in order(sub[:, j])] for j, s in enumerate(kept_sids)},
            }
        }
        ref_arrays = {}
    q = write(tmp_path / "q", {"dataset": "mrw", "split": "test", **ref}, ref_arrays)
    want, _ = evaluate_submission(q, root=small)
    assert "coverage" not in want
    for name, proto in got["protocols"].items():
        reasons = proto.pop("not_comparable_because")
        assert (
            proto.pop("comparable") is False
            and "3 items missing (failed in the pipeline)" in reasons
        )
        assert want["protocols"][name].pop("comparable") is False
        want["protocols"][name].pop("not_comparable_because")
        assert proto == want["protocols"][name]


def test_items_missing_for_no_recorded_reason_need_allow_missing(root, tmp_path, split):
    _fail_downloads(root, split, {split[0]})
    items, sents = embeddings()
    kept = split[1:-1]  # the first failed; the last has no reason to be missing
    p = write(
        tmp_path / "p",
        {
            "dataset": "mrw",
            "split": "test",
            "item_ids": kept,
            "embeddings": {"items": "i.npy", "sentences": "s.npy"},
            "sentence_ids": [f"{i}#0" for i in split],
        },
        {"i.npy": items[1:-1], "s.npy": sents},
    )
    run_bad(
        root,
        tmp_path,
        p,
        "2 id(s) of the split missing",
        repr(split[-1]),
        "1 of them",
        "--allow-missing",
    )
    result = run(root, p, "--allow-missing")
    assert result.exit_code == 0, result.output
    assert "38 of the split's 40 items: 2 left out, allowed (--allow-missing)" in result.output
