"""Ranks from float32 embeddings equal the float64 protocol's: on random continuous embeddings,
on constructed near-ties, and whatever the BLAS thread count.

The independent implementation here scores every pair in float64 (einsum, no float32 anywhere)
and counts each query's wrong candidates at or above its best right one."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_evaluation_scoring import write_preds, write_split

from mrw.evaluate import evaluate_submission, ranks_from_embeddings

METRICS = ("R@1", "R@5", "R@10", "MedR", "MeanR", "nMR")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def float64_scores(items, sents, dtype=np.float64, chunk=200):
    """[N, M] max over K x K of the dot products, every product and sum in `dtype`."""
    a = items.astype(dtype).reshape(len(items), -1, items.shape[-1])
    b = sents.astype(dtype).reshape(len(sents), -1, sents.shape[-1])
    flat = b.reshape(-1, b.shape[-1]).T
    out = np.empty((len(a), len(b)), dtype=dtype)
    for c in range(0, len(a), chunk):
        x = a[c : c + chunk]
        p = (x.reshape(-1, x.shape[-1]) @ flat).reshape(len(x), a.shape[1], len(b), b.shape[1])
        out[c : c + chunk] = p.max(axis=(1, 3))
    return out


def loop_ranks(scores, owner):
    """Per query, one at a time: wrong candidates scoring >= the best right one."""
    n, m = scores.shape
    i2t = np.empty(n, dtype=np.int64)
    for i in range(n):
        mine = owner == i
        i2t[i] = np.count_nonzero(scores[i, ~mine] >= scores[i, mine].max())
    t2i = np.empty(m, dtype=np.int64)
    for j in range(m):
        col = scores[:, j]
        t2i[j] = np.count_nonzero(col >= col[owner[j]]) - 1
    return i2t, t2i


def loop_metrics(i2t, t2i, n, m):
    out = {}
    for name, ranks, cands in (("i2t", i2t, m), ("t2i", t2i, n)):
        srt = sorted(int(r) for r in ranks)
        half = len(srt) // 2
        med = srt[half] if len(srt) % 2 else (srt[half - 1] + srt[half]) / 2
        out[name] = {
            **{f"R@{k}": 100.0 * sum(r < k for r in srt) / len(srt) for k in (1, 5, 10)},
            "MedR": float(int(med) + 1),
            "MeanR": sum(srt) / len(srt) + 1,
        }
        out[name]["nMR"] = out[name]["MedR"] / cands
    out["rsum"] = sum(out[d][f"R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


def assert_close(got, want):
    for d in ("i2t", "t2i"):
        for m in METRICS:
            assert abs(got[d][m] - want[d][m]) <= 1e-9, (d, m, got[d][m], want[d][m])
    assert abs(got["rsum"] - want["rsum"]) <= 1e-9


def continuous(rng, n, per_item, k, d, noise):
    """Unit-scale Gaussian items; each sentence a noisy copy of its item (ranks spread out).

    With these seeds, float32 products alone rank a few queries unlike float64 (MeanR moves by
    about 1e-4), so only float64 decisions meet the 1e-9 tolerance."""
    items = rng.standard_normal((n, k, d)).astype(np.float32)
    owner = np.repeat(np.arange(n), per_item)
    sents = items[owner] + noise * rng.standard_normal((len(owner), k, d))
    return items, sents.astype(np.float32), owner


# -- random continuous embeddings --------------------------------------------------
def test_mrw_size_k5_equals_a_float64_per_query_loop(root, tmp_path):
    rng = np.random.default_rng(11)
    n = 1000
    items, sents, owner = continuous(rng, n, 1, 5, 64, noise=100.0)
    write_split(root, "mrw", n, 1)
    got, _ = evaluate_submission(
        write_preds(tmp_path, "mrw", "embeddings", (items, sents)), root=root
    )
    s64 = float64_scores(items, sents)
    i2t, t2i = loop_ranks(s64, owner)
    assert_close(got["protocols"]["full"], loop_metrics(i2t, t2i, n, n))


@pytest.mark.slow
def test_coco_size_k2_5k_and_1k_equal_a_float64_per_query_loop(root, tmp_path):
    rng = np.random.default_rng(12)
    n = 5000
    items, sents, owner = continuous(rng, n, 5, 2, 32, noise=4.0)
    write_split(root, "coco", n, 5)
    got, _ = evaluate_submission(
        write_preds(tmp_path, "coco", "embeddings", (items, sents)), root=root
    )
    s64 = float64_scores(items, sents)
    i2t, t2i = loop_ranks(s64, owner)
    assert_close(got["protocols"]["5k"], loop_metrics(i2t, t2i, n, 5 * n))
    folds = []
    for f in range(5):
        rows, cols = slice(1000 * f, 1000 * (f + 1)), slice(5000 * f, 5000 * (f + 1))
        fi, ft = loop_ranks(s64[rows, cols], owner[cols] - 1000 * f)
        folds.append(loop_metrics(fi, ft, 1000, 5000))
    want_1k = {
        d: {m: float(np.mean([x[d][m] for x in folds])) for m in METRICS} for d in ("i2t", "t2i")
    }
    want_1k["rsum"] = float(np.mean([x["rsum"] for x in folds]))
    assert_close(got["protocols"]["1k"], want_1k)


THREADS_CHILD = """
import json, sys
from mrw.evaluate import evaluate_submission
res, _ = evaluate_submission(sys.argv[1], root=sys.argv[2])
print(json.dumps(res["protocols"], sort_keys=True))
"""


def test_one_and_two_blas_threads_give_identical_results(root, tmp_path):
    rng = np.random.default_rng(13)
    n = 2000
    items, sents, owner = continuous(rng, n, 1, 5, 256, noise=4.0)
    write_split(root, "mrw", n, 1)
    preds = write_preds(tmp_path, "mrw", "embeddings", (items, sents))
    outputs = []
    for threads in ("1", "2"):
        env = dict(os.environ, PYTHONPATH=REPO)
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = threads
        out = subprocess.run(
            [sys.executable, "-c", THREADS_CHILD, str(preds), str(root)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        outputs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert outputs[0] == outputs[1]
    s64 = float64_scores(items, sents)
    assert_close(outputs[0]["full"], loop_metrics(*loop_ranks(s64, owner), n, n))


# -- constructed near-ties ---------------------------------------------------------
def near_twins(rng, n, d=1024):
    """Items a_i with right sentences b_i, and for each a wrong sentence c_i (another item's)
    equal to b_i but for one coordinate, so that a_i.c_i - a_i.b_i = +-2^-30 (about 1e-9)
    exactly; every other pair scores far lower."""
    a = rng.uniform(-1, 1, (n, d)).astype(np.float32)
    a[:, 0] = 2.0**-10
    b = (a + 0.05 * rng.standard_normal((n, d))).astype(np.float32)
    b[:, 0] = 0.5
    sign = rng.choice([-1.0, 1.0], n)
    c = b.copy()
    c[:, 0] = (0.5 + sign * 2.0**-20).astype(np.float32)
    partners = rng.standard_normal((n, d)).astype(np.float32)
    items = np.concatenate([a, partners])  # item n + i owns sentence c_i
    sents = np.concatenate([b, c])
    return items, sents, sign


@pytest.mark.parametrize("direction", ["i2t", "t2i"])
def test_near_ties_of_1e_9_rank_as_float64_says(direction):
    rng = np.random.default_rng(14)
    n = 300
    items, sents, sign = near_twins(rng, n)
    owner = np.arange(2 * n)
    s64 = float64_scores(items, sents)
    gap = s64[np.arange(n), n + np.arange(n)] - s64[np.arange(n), np.arange(n)]
    assert np.allclose(np.abs(gap), 2.0**-30, rtol=1e-3, atol=0) and (np.sign(gap) == sign).all()
    if direction == "i2t":
        got = ranks_from_embeddings(items, sents, owner)
        first, scores = got[0][:n], s64
    else:  # the twins as items competing for one sentence: the same pairs, roles swapped
        got = ranks_from_embeddings(sents, items, owner)
        first, scores = got[1][:n], s64.T
    assert (first == (sign > 0)).all()  # the twin ahead by 1e-9 counts, the one behind does not
    want = loop_ranks(scores, owner)
    assert (got[0] == want[0]).all() and (got[1] == want[1]).all()
    s32 = float64_scores(items, sents, dtype=np.float32)
    s32 = s32 if direction == "i2t" else s32.T
    side = 0 if direction == "i2t" else 1
    assert (loop_ranks(s32, owner)[side][:n] != (sign > 0)).any()  # float32 cannot tell them apart


def test_ties_in_float64_still_count_against_the_submission():
    rng = np.random.default_rng(15)
    a = rng.uniform(-1, 1, (4, 64)).astype(np.float32)
    sents = np.concatenate([a, a[:1]])  # sentence 4 (item 4's) equals item 0's right sentence
    items = np.concatenate([a, rng.uniform(-1, 1, (1, 64)).astype(np.float32)])
    i2t, _ = ranks_from_embeddings(items, sents, np.arange(5))
    assert i2t[0] == 1


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_near_ties_rank_as_float64_says_on_the_gpu():
    rng = np.random.default_rng(16)
    n = 300
    items, sents, sign = near_twins(rng, n)
    owner = np.arange(2 * n)
    gpu = ranks_from_embeddings(items, sents, owner, device="cuda", block_bytes=2**22)
    cpu = ranks_from_embeddings(items, sents, owner)
    assert (gpu[0][:n] == (sign > 0)).all()
    assert (gpu[0] == cpu[0]).all() and (gpu[1] == cpu[1]).all()
