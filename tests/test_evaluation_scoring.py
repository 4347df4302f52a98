"""`mrw.evaluate` against a straightforward, independent implementation of the protocol.

Embeddings are drawn on a grid (multiples of 2^-11 in [-0.5, 0.5), D <= 16) so that every product
is a multiple of 2^-22 and every partial sum stays within 4 = 2^24 x 2^-22: exact in float32: the evaluator's float32 BLAS blocks and the loops below in float64
then see the very same numbers, and any disagreement is a bug, not rounding.
"""

import json

import numpy as np
import pytest

from mrw.catalog import write_catalog
from mrw.evaluate import evaluate_submission, ranks_from_embeddings, ranks_from_scores

METRICS = ("R@1", "R@5", "R@10", "MedR", "MeanR", "nMR")


# -- the independent implementation: one query at a time, float64 ---------------------------
def pair_scores(items, sents, dtype=np.float64):
    """[N, M]: max over the K x K dot products, 256 items at a time (exact on the grid)."""
    a = items.astype(np.float64).reshape(items.shape[0], -1, items.shape[-1])
    b = sents.astype(np.float64).reshape(sents.shape[0], -1, sents.shape[-1])
    flat = b.reshape(-1, b.shape[-1])
    out = np.empty((len(a), len(b)), dtype=dtype)
    for c in range(0, len(a), 256):
        p = (a[c : c + 256].reshape(-1, a.shape[2]) @ flat.T).reshape(
            -1, a.shape[1], len(b), b.shape[1]
        )
        out[c : c + 256] = np.max(
            [p[:, k, :, m] for k in range(a.shape[1]) for m in range(b.shape[1])], axis=0
        )
    return out


def loop_ranks(score_row, score_col_right, owner, n_items):
    """Per query, count the wrong candidates scoring >= the best right one, row by row."""
    m = len(owner)
    i2t = np.zeros(n_items, dtype=np.int64)
    t2i = np.zeros(m, dtype=np.int64)
    for i in range(n_items):
        row = score_row(i)
        mine = owner == i
        best = row[mine].max()
        i2t[i] = np.sum(row[~mine] >= best)
        t2i += (row >= score_col_right) & ~mine
    return i2t, t2i


def loop_metrics(i2t, t2i, n_items, n_sents):
    out = {}
    for name, ranks, cands in (("i2t", i2t, n_sents), ("t2i", t2i, n_items)):
        r = {f"R@{k}": 100.0 * sum(1 for x in ranks if x < k) / len(ranks) for k in (1, 5, 10)}
        srt = sorted(ranks)
        n = len(srt)
        med = srt[n // 2] if n % 2 else (srt[n // 2 - 1] + srt[n // 2]) / 2
        r["MedR"] = float(int(med) + 1)  # floor: ranks are >= 0
        r["MeanR"] = sum(ranks) / n + 1
        r["nMR"] = r["MedR"] / cands
        out[name] = r
    out["rsum"] = sum(out[d][f"R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


def reference(items, sents, owner):
    """Metrics of one fold, computed without the evaluator."""
    a = items.astype(np.float64).reshape(items.shape[0], -1, items.shape[-1])
    b = sents.astype(np.float64).reshape(sents.shape[0], -1, sents.shape[-1])
    right = np.einsum("jkd,jld->jkl", a[owner], b).max(axis=(1, 2))
    flat = b.reshape(-1, b.shape[-1])

    chunk = {}

    def row(i):  # scores of item i, computed 64 items at a time (fewer BLAS calls)
        c = i // 64
        if c not in chunk:
            chunk.clear()
            p = a[c * 64 : (c + 1) * 64].reshape(-1, a.shape[2]) @ flat.T
            p = p.reshape(-1, a.shape[1], b.shape[0], b.shape[1])
            chunk[c] = np.max(
                [p[:, k, :, j] for k in range(p.shape[1]) for j in range(p.shape[3])], axis=0
            )
        return chunk[c][i - c * 64]

    i2t, t2i = loop_ranks(row, right, owner, len(items))
    return loop_metrics(i2t, t2i, len(items), len(sents))


def mean_of(folds):
    out = {
        d: {m: float(np.mean([f[d][m] for f in folds])) for m in METRICS} for d in ("i2t", "t2i")
    }
    out["rsum"] = float(np.mean([f["rsum"] for f in folds]))
    return out


def assert_same(got, want):
    for d in ("i2t", "t2i"):
        for m in METRICS:
            assert got[d][m] is not None, (d, m)
            assert abs(got[d][m] - want[d][m]) <= 1e-9, (d, m, got[d][m], want[d][m])
    assert abs(got["rsum"] - want["rsum"]) <= 1e-9


# -- data --------------------------------------------------------------------------------------
def grid(rng, shape):
    assert shape[-1] <= 16, "beyond D = 16 float32 sums may round"
    return (rng.integers(-1024, 1024, size=shape) / 2048.0).astype(np.float32)


def related_pairs(rng, n, per_item, k, d, noise=1024):
    """Items and sentences whose right pairs are similar, so ranks are small and informative."""
    items = grid(rng, (n, k, d))
    owner = np.repeat(np.arange(n), per_item)
    sents = (
        np.clip(
            items[owner] * 2048 + rng.integers(-noise, noise + 1, size=(len(owner), k, d)),
            -1024,
            1023,
        )
        / 2048.0
    )
    return items, sents.astype(np.float32), owner


def has_ties(items, sents, owner):
    """Does any query's right score equal a wrong candidate's score (rankings cannot say that)?"""
    s = pair_scores(items, sents)
    right = s[owner, np.arange(len(owner))]
    wrong = np.ones_like(s, dtype=bool)
    wrong[owner, np.arange(len(owner))] = False
    best = np.full(len(items), -np.inf)
    np.maximum.at(best, owner, right)
    return bool(((s == right[None, :]) & wrong).any() or ((s == best[:, None]) & wrong).any())


def untied(seed, make):
    rng = np.random.default_rng(seed)
    for _ in range(50):
        items, sents, owner = make(rng)
        if not has_ties(items, sents, owner):
            return items, sents, owner
    raise AssertionError("could not draw inputs without ties")


def write_split(root, dataset, n, per_item, split="test"):
    rows = []
    for i in range(n):
        row = {
            "id": f"{dataset[0]}{i:05d}",
            "sentences": [f"sentence {i}.{s}" for s in range(per_item)],
            "url": f"http://127.0.0.1/{i}.gif",
            "protocol_sentences": list(range(per_item)),
        }
        if dataset == "tgif":
            row["protocol_sentences"] = [per_item - 1]
        if dataset == "coco":
            row.update(cocoid=i, filepath="val2014", filename=f"{i}.jpg")
        rows.append(row)
    write_catalog(rows, root, dataset, split)
    return [r["id"] for r in rows]


def write_preds(folder, dataset, kind, payload, name="preds.json", **extra):
    folder.mkdir(parents=True, exist_ok=True)
    obj = {"dataset": dataset, "split": "test", "model": f"test {kind}", **extra}
    if kind == "scores":
        np.save(folder / "scores.npy", payload)
        obj["scores"] = "scores.npy"
    elif kind == "embeddings":
        np.save(folder / "items.npy", payload[0])
        np.save(folder / "sentences.npy", payload[1])
        obj["embeddings"] = {"items": "items.npy", "sentences": "sentences.npy"}
    else:
        obj["rankings"] = payload
    (folder / name).write_text(json.dumps(obj))
    return folder / name


def rankings_from(scores, item_ids, sent_ids, top=None):
    """Best first; a stable sort of the negated score (the inputs have no ties that matter)."""
    i2t = {
        item_ids[i]: [sent_ids[j] for j in np.argsort(-scores[i], kind="stable")[:top]]
        for i in range(len(item_ids))
    }
    t2i = {
        sent_ids[j]: [item_ids[i] for i in np.argsort(-scores[:, j], kind="stable")[:top]]
        for j in range(len(sent_ids))
    }
    return {"i2t": i2t, "t2i": t2i}


# -- equal to the independent implementation ----------------------------------
@pytest.mark.parametrize("k", [1, 5])
def test_mrw_like_matches_independent_loops_for_every_input_kind(root, tmp_path, k):
    n = 1000
    items, sents, owner = untied(
        k, lambda rng: (grid(rng, (n, k, 16)), grid(rng, (n, k, 16)), np.arange(n))
    )
    want = reference(items, sents, owner)
    ids = write_split(root, "mrw", n, 1)
    sids = [f"{i}#0" for i in ids]
    scores = pair_scores(items, sents)
    got = {}
    for kind, payload in (
        ("embeddings", (items, sents)),
        ("scores", scores.astype(np.float32)),
        ("rankings", rankings_from(scores, ids, sids)),
    ):
        res, _ = evaluate_submission(write_preds(tmp_path / kind, "mrw", kind, payload), root=root)
        assert list(res["protocols"]) == ["full"]
        got[kind] = res["protocols"]["full"]
        assert_same(got[kind], want)
    # a random-scoring model stays near chance: the test is not vacuous
    assert got["scores"]["i2t"]["MedR"] > 300


def test_coco_like_5k_and_1k_match_independent_loops(root, tmp_path):
    n, per, k, d = 5000, 5, 2, 16
    rng = np.random.default_rng(7)
    items, sents, owner = related_pairs(rng, n, per, k, d, noise=1600)
    write_split(root, "coco", n, per)
    res, _ = evaluate_submission(
        write_preds(tmp_path, "coco", "embeddings", (items, sents)), root=root
    )
    assert set(res["protocols"]) == {"5k", "1k"}
    assert_same(res["protocols"]["5k"], reference(items, sents, owner))
    folds = [
        reference(
            items[f * 1000 : (f + 1) * 1000],
            sents[f * 5000 : (f + 1) * 5000],
            owner[f * 5000 : (f + 1) * 5000] - f * 1000,
        )
        for f in range(5)
    ]
    assert res["protocols"]["1k"]["folds"] == 5
    assert_same(res["protocols"]["1k"], mean_of(folds))
    # the two protocols really differ (1,000 candidates are easier than 5,000)
    assert res["protocols"]["1k"]["i2t"]["R@1"] > res["protocols"]["5k"]["i2t"]["R@1"]


def test_coco_like_scores_and_embeddings_agree_with_ids_in_another_order(root, tmp_path):
    n, per = 2000, 5
    items, sents, owner = untied(3, lambda rng: related_pairs(rng, n, per, 2, 16, noise=2400))
    ids = write_split(root, "coco", n, per)
    sids = [f"{ids[o]}#{j % per}" for j, o in enumerate(owner)]
    want = evaluate_submission(
        write_preds(tmp_path / "e", "coco", "embeddings", (items, sents)), root=root
    )[0]["protocols"]
    pi, ps = (
        np.random.default_rng(1).permutation(n),
        np.random.default_rng(2).permutation(len(sids)),
    )
    scores = pair_scores(items, sents, np.float32)[pi][:, ps]
    got = evaluate_submission(
        write_preds(
            tmp_path / "s",
            "coco",
            "scores",
            scores,
            item_ids=[ids[i] for i in pi],
            sentence_ids=[sids[j] for j in ps],
        ),
        root=root,
    )[0]["protocols"]
    shuffled = evaluate_submission(
        write_preds(
            tmp_path / "p",
            "coco",
            "embeddings",
            (items[pi], sents[ps]),
            item_ids=[ids[i] for i in pi],
            sentence_ids=[sids[j] for j in ps],
        ),
        root=root,
    )[0]["protocols"]
    for name in ("5k", "1k"):
        assert_same(got[name], want[name])
        assert_same(shuffled[name], want[name])
    folds = [
        reference(
            items[f * 1000 : (f + 1) * 1000],
            sents[f * 5000 : (f + 1) * 5000],
            owner[f * 5000 : (f + 1) * 5000] - f * 1000,
        )
        for f in range(2)
    ]
    assert_same(want["1k"], mean_of(folds))


def test_tgif_protocol_uses_the_last_sentence_and_all_sentences_on_request(root, tmp_path):
    n, per = 300, 3
    rng = np.random.default_rng(5)
    items, sents_all, owner_all = related_pairs(rng, n, per, 1, 16, noise=800)
    write_split(root, "tgif", n, per)
    last = np.arange(n) * per + per - 1
    res, _ = evaluate_submission(
        write_preds(tmp_path / "p", "tgif", "embeddings", (items, sents_all[last])), root=root
    )
    assert (res["num_items"], res["num_sentences"]) == (n, n)
    assert_same(res["protocols"]["full"], reference(items, sents_all[last], np.arange(n)))
    res, _ = evaluate_submission(
        write_preds(tmp_path / "a", "tgif", "embeddings", (items, sents_all)),
        root=root,
        all_sentences=True,
    )
    assert res["sentences"] == "all" and res["num_sentences"] == n * per
    assert_same(res["protocols"]["full"], reference(items, sents_all, owner_all))


def test_block_size_does_not_change_ranks():
    rng = np.random.default_rng(11)
    items, sents, owner = related_pairs(rng, 97, 3, 3, 16)
    want = ranks_from_scores(pair_scores(items, sents), owner)
    for block_bytes in (1, 3 * 291 * 4 * 5, 10**9):  # 1 item per block, 5, all at once
        got = ranks_from_embeddings(items, sents, owner, block_bytes=block_bytes)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


# -- ties and truncated rankings ----------------------------------------------
def test_ties_count_against_the_submission():
    # item 0's right sentence ties with a wrong one, so does item 1's; sentence 1's item ties
    # with item 2 and trails item 0
    scores = np.array([[1.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.5, 2.0]])
    i2t, t2i = ranks_from_scores(scores, np.arange(3))
    assert i2t.tolist() == [1, 1, 0]
    assert t2i.tolist() == [0, 2, 0]


def test_constant_scores_score_nothing(root, tmp_path):
    n = 200
    write_split(root, "mrw", n, 1)
    res, _ = evaluate_submission(
        write_preds(tmp_path, "mrw", "scores", np.zeros((n, n), np.float32)), root=root
    )
    full = res["protocols"]["full"]
    for d in ("i2t", "t2i"):
        assert [full[d][f"R@{k}"] for k in (1, 5, 10)] == [0.0, 0.0, 0.0]
        assert full[d]["MedR"] == n and full[d]["MeanR"] == n
    assert full["rsum"] == 0.0


def test_constant_embeddings_score_nothing_with_k_embeddings(root, tmp_path):
    n = 50
    write_split(root, "coco", n, 5)
    items, sents = np.ones((n, 2, 8), np.float32), np.ones((5 * n, 2, 8), np.float32)
    res, _ = evaluate_submission(
        write_preds(tmp_path, "coco", "embeddings", (items, sents)), root=root
    )
    assert list(res["protocols"]) == ["5k"]  # fewer than 1,000 images: no 1k folds
    p = res["protocols"]["5k"]
    assert p["i2t"]["R@10"] == 0.0 and p["t2i"]["R@10"] == 0.0
    assert p["i2t"]["MedR"] == 5 * n - 5 + 1 and p["t2i"]["MedR"] == n


def test_truncated_rankings_keep_recalls_exact_and_null_what_they_cannot_bound(root, tmp_path):
    n, top = 1000, 20
    items, sents, owner = untied(4, lambda rng: related_pairs(rng, n, 1, 1, 16, noise=800))
    ids = write_split(root, "mrw", n, 1)
    sids = [f"{i}#0" for i in ids]
    scores = pair_scores(items, sents)
    full = evaluate_submission(write_preds(tmp_path / "s", "mrw", "scores", scores), root=root)[0]
    cut = evaluate_submission(
        write_preds(tmp_path / "r", "mrw", "rankings", rankings_from(scores, ids, sids, top=top)),
        root=root,
    )[0]
    want, got = full["protocols"]["full"], cut["protocols"]["full"]
    ranks = ranks_from_scores(scores, owner)
    for d, r in zip(("i2t", "t2i"), ranks):
        assert 0 < np.mean(r >= top) < 0.5, "the test needs some right answers beyond the lists"
        for k in (1, 5, 10):
            assert got[d][f"R@{k}"] == want[d][f"R@{k}"]
        assert got[d]["MedR"] == want[d]["MedR"]  # the median lies inside the lists
        assert got[d]["nMR"] == want[d]["nMR"]
        assert got[d]["MeanR"] is None
        assert (
            "truncated" in got[d]["reasons"]["MeanR"] and f"top {top}" in got[d]["reasons"]["MeanR"]
        )
    assert got["rsum"] == want["rsum"]


def test_truncated_rankings_null_the_median_when_it_lies_beyond_the_lists(root, tmp_path):
    n, top = 300, 10
    items, sents, owner = untied(
        9, lambda rng: (grid(rng, (n, 1, 16)), grid(rng, (n, 1, 16)), np.arange(n))
    )
    ids = write_split(root, "mrw", n, 1)
    scores = pair_scores(items, sents)
    res = evaluate_submission(
        write_preds(
            tmp_path,
            "mrw",
            "rankings",
            rankings_from(scores, ids, [f"{i}#0" for i in ids], top=top),
        ),
        root=root,
    )[0]["protocols"]["full"]
    want = loop_metrics(*ranks_from_scores(scores, owner), n, n)
    for d in ("i2t", "t2i"):
        assert res[d]["R@10"] == want[d]["R@10"]
        assert res[d]["MedR"] is None and res[d]["nMR"] is None
        assert "median rank lies beyond" in res[d]["reasons"]["MedR"]


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_gpu_gives_the_cpu_ranks():
    rng = np.random.default_rng(12)
    items, sents, owner = related_pairs(rng, 3000, 2, 3, 16)
    cpu = ranks_from_embeddings(items, sents, owner)
    gpu = ranks_from_embeddings(items, sents, owner, device="cuda", block_bytes=2**22)
    np.testing.assert_array_equal(cpu[0], gpu[0])
    np.testing.assert_array_equal(cpu[1], gpu[1])


def test_the_torch_scorer_gives_the_numpy_scores():
    """The `--gpu` scorer's code path, run through torch on the CPU (CUDA is seldom here)."""
    from mrw.evaluate import BlockScorer as _BlockScorer

    rng = np.random.default_rng(5)
    items, sents, _ = related_pairs(rng, 50, 3, 2, 16)
    plain, torched = _BlockScorer(items, sents), _BlockScorer(items, sents, use_torch=True)
    assert torched.use_torch and not plain.use_torch
    for rows, cols in ((slice(0, 50), slice(0, 50)), (slice(7, 19), slice(30, 45))):
        np.testing.assert_allclose(
            torched.scores(rows, cols), plain.scores(rows, cols), rtol=1e-5, atol=1e-5
        )
