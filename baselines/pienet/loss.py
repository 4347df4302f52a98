"""The PVSE objective (section 3.3): multiple-instance ranking + diversity + domain discrepancy.

Reductions follow yalesong/pvse `loss.py` (means, not sums), so the published loss weights keep
their meaning: L = L_mil + div_weight * (L_div(visual) + L_div(text)) + mmd_weight * L_mmd,
the last two only when K > 1, as there.
"""

from __future__ import annotations

import torch

from baselines.pienet.config import Config
from baselines.pienet.model import Embedding


def pair_scores(items: torch.Tensor, sentences: torch.Tensor) -> torch.Tensor:
    """[N, K, D] x [M, K, D] -> [N, M]: a pair's score is its best match over the K x K embeddings."""
    n, k, d = items.shape
    m = sentences.shape[0]
    sims = items.reshape(n * k, d) @ sentences.reshape(m * sentences.shape[1], d).t()
    return sims.view(n, k, m, -1).amax(dim=(1, 3))


def ranking_loss(scores: torch.Tensor, margin: float, hardest: bool = False) -> torch.Tensor:
    """Bidirectional hinge ranking loss on a square score matrix whose diagonal holds the true pairs.

    Row i is item i: hinge(margin + s(i, j) - s(i, i)) over sentences j != i (item -> text), and
    hinge(margin + s(j, i) - s(i, i)) over items j != i (text -> item). `hardest` keeps only the
    largest violation per query (VSE++); otherwise every negative counts. Each direction is a mean
    over its entries (the N x N matrix, or the N queries when hardest).
    """
    positive = scores.diag()
    off_diagonal = ~torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    item_to_text = (margin + scores - positive.unsqueeze(1)).clamp_min(0) * off_diagonal
    text_to_item = (margin + scores - positive.unsqueeze(0)).clamp_min(0) * off_diagonal
    if hardest:
        item_to_text = item_to_text.amax(dim=1)
        text_to_item = text_to_item.amax(dim=0)
    return item_to_text.mean() + text_to_item.mean()


def diversity_loss(residual: torch.Tensor) -> torch.Tensor:
    """Pushes an instance's K residuals apart: || R R^T - I ||_F / K^2 with rows of R unit-norm,
    averaged over the batch (eq. 6). Zero for K = 1."""
    k = residual.shape[1]
    unit = residual / residual.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    gram = unit @ unit.transpose(1, 2)
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=residual.device)
    return (gram * off_diagonal).flatten(1).norm(dim=1).mean() / k**2


def rbf_kernel(x: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """exp(-gamma * ||x - y||) for every pair of rows, as the reference's kernel."""
    return torch.exp(-gamma * torch.cdist(x, y, p=2))


def mmd_loss(x: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """Maximum mean discrepancy between two sets of embeddings (rows), pulling the two modalities'
    distributions together (eq. 7): mean k(x, x') - 2 mean k(x, y) + mean k(y, y')."""
    return (
        rbf_kernel(x, x, gamma).mean()
        - 2 * rbf_kernel(x, y, gamma).mean()
        + rbf_kernel(y, y, gamma).mean()
    )


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def pvse_loss(
    visual: Embedding, text: Embedding, config: Config
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted sum for a batch of true pairs (visual[i], text[i]); `visual` and `text` are the
    encoders' `Embedding`s. Computed in float32 even under autocast; the parts come detached."""
    items, sentences = _at_least_float32(visual.embeds), _at_least_float32(text.embeds)
    ranking = ranking_loss(pair_scores(items, sentences), config.margin, config.max_violation)
    total, parts = ranking, {"ranking": ranking.detach()}
    # with one embedding per instance the reference applies neither term
    polysemous = config.num_embeds > 1
    if polysemous and config.div_weight > 0:
        div = diversity_loss(_at_least_float32(visual.residual)) + diversity_loss(
            _at_least_float32(text.residual)
        )
        total = total + config.div_weight * div
        parts["diversity"] = div.detach()
    if polysemous and config.mmd_weight > 0:
        d = items.shape[-1]
        mmd = mmd_loss(items.reshape(-1, d), sentences.reshape(-1, d), config.mmd_gamma)
        total = total + config.mmd_weight * mmd
        parts["mmd"] = mmd.detach()
    return total, parts
