"""PVSE: two Polysemous Instance Embedding networks, one per modality, in one embedding space.

Section 3 of Song & Soleymani, "Polysemous Visual-Semantic Embedding for Cross-Modal Retrieval"
(CVPR 2019); the layer sizes follow the reference implementation (yalesong/pvse `model.py`).
Each encoder has a global feature (a bidirectional GRU's final states, or a linear map of the
pooled image feature) and local features (words, frames, or the 7x7 grid); a PIE-Net turns them
into K embeddings. Visual features come precomputed from the frozen backbone (`mrw
extract-features`), which is what the reference's frozen CNN computed on the fly. With
`legacy_global` the video and text global features are the reference's `--legacy` ones (the GRU
output at the last step), which its published models use.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from baselines.pienet.config import Config
from mrw.errors import UsageError


class Embedding(NamedTuple):
    """An encoder's output: K unit-norm embeddings, the attention maps and the residuals."""

    embeds: torch.Tensor  # [B, K, embed_size], L2-normalised
    attention: torch.Tensor  # [B, L, K], over the local features
    residual: torch.Tensor  # [B, K, embed_size], what the diversity loss looks at


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12)


def padding_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """True where a position lies past the sequence's length."""
    positions = torch.arange(max_length, device=lengths.device)
    return positions.unsqueeze(0) >= lengths.unsqueeze(1)


def final_states(rnn: nn.GRU, sequence: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """The last hidden state of each direction of a bidirectional GRU, concatenated: [B, 2H].

    With `lengths`, padded steps are skipped, so the forward state is taken at the last real step.
    """
    steps: torch.Tensor | PackedSequence = sequence
    if lengths is not None:
        steps = pack_padded_sequence(
            sequence, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
    _, h_n = rnn(steps)  # [2, B, H]: forward, backward
    return torch.cat([h_n[0], h_n[1]], dim=-1)


def last_step_output(rnn: nn.GRU, sequence: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The GRU's output at each sequence's last real step: [B, 2H] (the reference's `--legacy`).

    Its backward half has then seen only that last step, unlike the final state `h_n`.
    """
    packed = pack_padded_sequence(sequence, lengths.cpu(), batch_first=True, enforce_sorted=False)
    outputs, _ = pad_packed_sequence(rnn(packed)[0], batch_first=True)
    rows = torch.arange(outputs.shape[0], device=outputs.device)
    return outputs[rows, lengths.to(outputs.device) - 1]


def repeat_last_frame(frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each clip's frames past its length replaced by its last real frame, as the reference's
    loader padded a short clip up to T."""
    steps = torch.arange(frames.shape[1], device=frames.device)
    source = torch.minimum(steps.unsqueeze(0), (lengths.to(frames.device) - 1).unsqueeze(1))
    return torch.gather(frames, 1, source.unsqueeze(-1).expand(-1, -1, frames.shape[2]))


class MultiHeadSelfAttention(nn.Module):
    """K attention maps over L local features, softmax over L of w2(tanh(w1 x)) (Lin et al. 2017)."""

    def __init__(self, num_heads: int, d_in: int, d_hidden: int):
        super().__init__()
        self.w1 = nn.Linear(d_in, d_hidden, bias=False)
        self.w2 = nn.Linear(d_hidden, num_heads, bias=False)
        nn.init.xavier_uniform_(self.w1.weight)
        nn.init.xavier_uniform_(self.w2.weight)

    def forward(
        self, x: torch.Tensor, pad_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, L, d_in] -> the K attended features [B, K, d_in] and the maps [B, L, K]."""
        logits = self.w2(torch.tanh(self.w1(x)))
        if pad_mask is not None:
            logits = logits.masked_fill(pad_mask.unsqueeze(-1), float("-inf"))
        attention = torch.softmax(logits, dim=1)
        return torch.bmm(attention.transpose(1, 2), x), attention


class PIENet(nn.Module):
    """Polysemous Instance Embedding: K locally-guided residuals, each added to the global feature.

    v_k = LayerNorm(global + dropout(sigmoid(fc(attended_k)))), then L2-normalised (eq. 1-3).
    """

    def __init__(self, num_embeds: int, d_local: int, d_out: int, dropout: float = 0.0):
        super().__init__()
        self.attention = MultiHeadSelfAttention(num_embeds, d_local, d_local // 2)
        self.fc = nn.Linear(d_local, d_out)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_out)
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(
        self,
        global_feature: torch.Tensor,
        local_features: torch.Tensor,
        pad_mask: torch.Tensor | None = None,
    ) -> Embedding:
        attended, attention = self.attention(local_features, pad_mask)
        residual = self.dropout(torch.sigmoid(self.fc(attended)))
        embeds = self.layer_norm(global_feature.unsqueeze(1) + residual)
        return Embedding(l2_normalize(embeds), attention, residual)


class EncoderText(nn.Module):
    """Words -> K embeddings: a bidirectional GRU's final states (global), the words (local)."""

    def __init__(self, vocab_size: int, config: Config):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, config.word_dim)
        nn.init.xavier_uniform_(self.embed.weight)
        self.embed.weight.requires_grad_(config.finetune_word_embeddings)
        self.rnn = nn.GRU(
            config.word_dim, config.embed_size // 2, bidirectional=True, batch_first=True
        )
        self.pie_net = PIENet(config.num_embeds, config.word_dim, config.embed_size, config.dropout)
        self.dropout = nn.Dropout(config.dropout)
        self.legacy_global = config.legacy_global

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> Embedding:
        """tokens [B, L] word ids, padded; lengths [B]."""
        words = self.dropout(self.embed(tokens))
        summary = last_step_output if self.legacy_global else final_states
        sentence = self.dropout(summary(self.rnn, words, lengths))
        return self.pie_net(sentence, words, padding_mask(lengths, tokens.shape[1]))


class EncoderVideo(nn.Module):
    """Frame features -> K embeddings: a bidirectional GRU's final states (global), the frames (local)."""

    def __init__(self, config: Config):
        super().__init__()
        self.rnn = nn.GRU(
            config.feature_dim, config.embed_size // 2, bidirectional=True, batch_first=True
        )
        self.pie_net = PIENet(
            config.num_embeds, config.feature_dim, config.embed_size, config.dropout
        )
        self.dropout = nn.Dropout(config.dropout)
        self.legacy_global = config.legacy_global

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor | None = None) -> Embedding:
        """frames [B, T, D] per-frame CNN features; lengths [B] when some videos are padded.

        With `legacy_global` a short clip is embedded as the reference saw it: padded to T with
        its last frame, all T steps attended, the global feature the GRU output at step T.
        """
        if self.legacy_global:
            if lengths is not None:
                frames = repeat_last_frame(frames, lengths)
            states, _ = self.rnn(frames)
            video = self.dropout(self.dropout(states)[:, -1])
            return self.pie_net(video, frames)
        video = self.dropout(final_states(self.rnn, frames, lengths))
        mask = None if lengths is None else padding_mask(lengths, frames.shape[1])
        return self.pie_net(video, frames, mask)


class EncoderImage(nn.Module):
    """A 7x7 feature grid -> K embeddings: the pooled feature through a linear layer (global),
    the 49 cells (local)."""

    def __init__(self, config: Config):
        super().__init__()
        self.fc = nn.Linear(config.feature_dim, config.embed_size)
        self.pie_net = PIENet(
            config.num_embeds, config.feature_dim, config.embed_size, config.dropout
        )
        self.dropout = nn.Dropout(config.dropout)
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, grid: torch.Tensor, pooled: torch.Tensor | None = None) -> Embedding:
        """grid [B, 49, D]; pooled [B, D] (the backbone's average pool of the grid when not given)."""
        if pooled is None:
            pooled = grid.mean(dim=1)
        image = self.dropout(self.fc(pooled))
        return self.pie_net(image, grid)


class PVSE(nn.Module):
    """The visual and the text PIE-Nets, trained jointly (section 3.3)."""

    def __init__(self, vocab_size: int, config: Config):
        super().__init__()
        if vocab_size < 1:
            raise UsageError(f"vocabulary size must be >= 1, got {vocab_size}")
        self.config = config
        self.visual = EncoderImage(config) if config.is_image else EncoderVideo(config)
        self.text = EncoderText(vocab_size, config)

    def embed_items(
        self,
        features: torch.Tensor,
        lengths: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
    ) -> Embedding:
        if self.config.is_image:
            return self.visual(features, pooled)
        return self.visual(features, lengths)

    def embed_sentences(self, tokens: torch.Tensor, lengths: torch.Tensor) -> Embedding:
        return self.text(tokens, lengths)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def read_word_vectors(
    path: str | os.PathLike[str], words: list[str], dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of a GloVe-format text file (`word v1 ... vd` per line) for `words`, and a hit mask.

    Words not in the file keep a zero row and are reported by count; the caller keeps their
    random initialisation.
    """
    index = {w: i for i, w in enumerate(words)}
    vectors = torch.zeros(len(words), dim)
    found = torch.zeros(len(words), dtype=torch.bool)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line_no, line in enumerate(f, 1):
                word, _, rest = line.rstrip("\n").partition(" ")
                i = index.get(word)
                if i is None or found[i]:
                    continue
                values = rest.split(" ")
                if len(values) != dim:
                    raise UsageError(
                        f"{path}, line {line_no}: {len(values)} values for {word!r}, "
                        f"expected word_dim = {dim}"
                    )
                vectors[i] = torch.tensor([float(v) for v in values])
                found[i] = True
    except OSError as e:
        raise UsageError(f"cannot read word vectors {path}: {e.strerror}") from None
    except ValueError:
        raise UsageError(
            f"{path}, line {line_no}: not a number in the vector of {word!r}"
        ) from None
    return vectors, found


def init_word_embeddings(
    encoder: EncoderText, words: list[str], path: str | os.PathLike[str]
) -> int:
    """Copy pretrained vectors into the text encoder's embedding table; returns the hit count."""
    vectors, found = read_word_vectors(path, words, encoder.embed.embedding_dim)
    if len(words) != encoder.embed.num_embeddings:
        raise UsageError(
            f"vocabulary has {len(words)} words, the model {encoder.embed.num_embeddings}"
        )
    with torch.no_grad():
        encoder.embed.weight[found] = vectors[found]
    return int(found.sum())


def describe(model: PVSE) -> str:
    """The architecture, then `parameters: N` (all) and `trainable: M`."""
    return "\n".join(
        [
            str(model),
            f"parameters: {count_parameters(model)}",
            f"trainable: {count_parameters(model, trainable_only=True)}",
        ]
    )
