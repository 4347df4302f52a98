"""Each PVSE loss term against a direct, loop-by-loop reading of the paper's equations."""

import math

import pytest
import torch

from baselines.pienet.config import load_config
from baselines.pienet.loss import diversity_loss, mmd_loss, pair_scores, pvse_loss, ranking_loss
from baselines.pienet.model import Embedding


def unit_rows(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


def direct_score(item, sentence):
    """s(x, y) = max over the K x K pairs of embeddings of their dot product."""
    return max(float(a @ b) for a in item for b in sentence)


def direct_ranking(items, sentences, margin, hardest):
    n = len(items)
    s = [[direct_score(items[i], sentences[j]) for j in range(n)] for i in range(n)]

    def hinge(v):
        return max(0.0, v)

    i2t = [
        [hinge(margin + s[i][j] - s[i][i]) if i != j else 0.0 for j in range(n)] for i in range(n)
    ]
    t2i = [
        [hinge(margin + s[i][j] - s[j][j]) if i != j else 0.0 for i in range(n)] for j in range(n)
    ]
    if hardest:
        return sum(max(r) for r in i2t) / n + sum(max(r) for r in t2i) / n
    return sum(map(sum, i2t)) / n**2 + sum(map(sum, t2i)) / n**2


def direct_diversity(residuals):
    total = 0.0
    for r in residuals:
        k = len(r)
        u = [v / v.norm() for v in r]
        frob = math.sqrt(
            sum((float(u[a] @ u[b]) - (a == b)) ** 2 for a in range(k) for b in range(k))
        )
        total += frob / k**2
    return total / len(residuals)


def direct_mmd(x, y, gamma):
    def k(a, b):
        return math.exp(-gamma * float((a - b).norm()))

    def mean(p, q):
        return sum(k(a, b) for a in p for b in q) / (len(p) * len(q))

    return mean(x, x) - 2 * mean(x, y) + mean(y, y)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("hardest", [False, True])
def test_ranking_loss_matches_the_equation(k, hardest):
    items, sentences = unit_rows(7, k, 16, seed=k), unit_rows(7, k, 16, seed=10 + k)
    got = ranking_loss(pair_scores(items, sentences), margin=0.2, hardest=hardest)
    assert float(got) == pytest.approx(direct_ranking(items, sentences, 0.2, hardest), abs=1e-6)
    assert float(got) > 0


def test_pair_scores_take_the_best_of_k_by_k():
    items, sentences = unit_rows(4, 2, 8, seed=1), unit_rows(5, 2, 8, seed=2)
    scores = pair_scores(items, sentences)
    assert scores.shape == (4, 5)
    for i in range(4):
        for j in range(5):
            assert float(scores[i, j]) == pytest.approx(
                direct_score(items[i], sentences[j]), abs=1e-12
            )


def test_ranking_loss_is_zero_when_true_pairs_win_by_the_margin():
    scores = torch.full((4, 4), 0.1, dtype=torch.float64) + torch.eye(4, dtype=torch.float64)
    assert float(ranking_loss(scores, margin=0.5)) == 0.0
    assert float(ranking_loss(scores, margin=1.5, hardest=True)) == pytest.approx(2 * 0.5)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_diversity_loss_matches_the_equation(k):
    g = torch.Generator().manual_seed(k)
    residual = torch.rand(
        6, k, 12, generator=g, dtype=torch.float64
    )  # sigmoid outputs are positive
    got = float(diversity_loss(residual))
    assert got == pytest.approx(direct_diversity(residual), abs=1e-6)
    assert (got == 0.0) == (k == 1)


@pytest.mark.parametrize("k", [1, 4])
def test_mmd_loss_matches_the_equation(k):
    x, y = (
        unit_rows(5 * k, 10, seed=3).reshape(5 * k, 10),
        unit_rows(5 * k, 10, seed=4).reshape(5 * k, 10),
    )
    got = float(mmd_loss(x, y, gamma=0.5))
    assert got == pytest.approx(direct_mmd(x, y, 0.5), abs=1e-6)
    assert got > 0
    assert float(mmd_loss(x, x, gamma=0.5)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["mrw", "coco", "tgif_k1"])
def test_total_is_the_weighted_sum_of_the_terms(name):
    config = load_config(name)
    k, n, d = config.num_embeds, 6, 32
    items, sentences = unit_rows(n, k, d, seed=5), unit_rows(n, k, d, seed=6)
    res_v = torch.rand(n, k, d, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    res_t = torch.rand(n, k, d, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    total, parts = pvse_loss(
        Embedding(items, None, res_v), Embedding(sentences, None, res_t), config
    )
    expected = direct_ranking(items, sentences, config.margin, config.max_violation)
    if config.div_weight:
        expected += config.div_weight * (direct_diversity(res_v) + direct_diversity(res_t))
    if config.mmd_weight:
        expected += config.mmd_weight * direct_mmd(
            items.reshape(-1, d), sentences.reshape(-1, d), config.mmd_gamma
        )
    assert float(total) == pytest.approx(expected, abs=1e-6)
    assert set(parts) == {"ranking"} | ({"diversity", "mmd"} if k > 1 else set())


@pytest.mark.parametrize("name", ["mrw_k1", "tgif_k1", "coco_k1"])
def test_one_embedding_gets_neither_diversity_nor_mmd_whatever_their_weights(name):
    """The reference applies both terms only when K > 1."""
    config = load_config(name).replace(mmd_weight=0.5, div_weight=0.5)
    n, d = 6, 32
    items, sentences = unit_rows(n, 1, d, seed=1), unit_rows(n, 1, d, seed=2)
    residual = torch.rand(n, 1, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    total, parts = pvse_loss(
        Embedding(items, None, residual), Embedding(sentences, None, residual), config
    )
    assert set(parts) == {"ranking"}
    expected = direct_ranking(items, sentences, config.margin, config.max_violation)
    assert float(total) == pytest.approx(expected, abs=1e-9)
    assert direct_mmd(items.reshape(-1, d), sentences.reshape(-1, d), config.mmd_gamma) > 1e-3
