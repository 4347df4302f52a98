"""Embedding your own data with a trained or imported PVSE: `load_model(DIR)` and its `embed_*`.

    from baselines.pienet import load_model
    m = load_model("runs/mrw")                   # a run folder, an import folder or a .pt file
    v = m.embed_videos(features, lengths)        # [B, T, 2048], [B] -> [B, K, E]
    s = m.embed_sentences(["a cat jumps"])       # -> [B, K, E]
    scores = torch.einsum("ikd,jld->ijkl", v, s).amax((2, 3))   # a pair: its best of K x K

Every result is a float32 CPU tensor of unit-norm rows, whatever the device the model runs on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Union

import numpy as np
import torch

from baselines.pienet.config import Config
from baselines.pienet.model import PVSE
from mrw.errors import UsageError

if TYPE_CHECKING:
    from mrw.text import Vocabulary

#: what the `embed_*` methods take for an array
ArrayLike = Union[torch.Tensor, np.ndarray]


def _as_tensor(x: object, name: str, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise UsageError(f"{name}: expected a tensor or a numpy array, got {type(x).__name__}")
    if x.is_floating_point() != dtype.is_floating_point:
        raise UsageError(f"{name}: expected {'floats' if dtype.is_floating_point else 'integers'}")
    return x


class PretrainedModel:
    """A PVSE in eval mode with its vocabulary, on one device."""

    def __init__(self, model: PVSE, vocab: Vocabulary, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.vocab = vocab

    @property
    def config(self) -> Config:
        return self.model.config

    def _autocast(self) -> AbstractContextManager:
        from baselines.pienet.predict import autocast

        return autocast(self.device, self.config.mixed_precision)

    def _features(self, x: ArrayLike, name: str, length: int | None) -> torch.Tensor:
        x = _as_tensor(x, name, torch.float32)
        dim = self.config.feature_dim
        if x.dim() != 3 or x.shape[-1] != dim or x.shape[0] == 0 or x.shape[1] == 0:
            shape = f"[B, {length}, {dim}]" if length else f"[B, T, {dim}]"
            raise UsageError(f"{name}: expected a tensor {shape}, got {list(x.shape)}")
        if length is not None and x.shape[1] != length:
            raise UsageError(f"{name}: expected {length} cells per image, got {x.shape[1]}")
        if not bool(torch.isfinite(x).all()):
            raise UsageError(f"{name}: holds inf or nan")
        return x.to(self.device, torch.float32)

    @torch.no_grad()
    def embed_videos(self, features: ArrayLike, lengths: ArrayLike | None = None) -> torch.Tensor:
        """Per-frame features [B, T, D] (and each clip's frame count [B], 1..T) -> [B, K, E].

        What a tensor holds past a clip's length never matters: the model skips those steps,
        or (legacy models) repeats the clip's last frame there, as the reference's loader did.
        """
        if self.config.is_image:
            raise UsageError("embed_videos: this is an image model (COCO); use embed_images")
        features = self._features(features, "features", None)
        if lengths is not None:
            lengths = _as_tensor(lengths, "lengths", torch.long).to(torch.long).flatten()
            if lengths.shape[0] != features.shape[0]:
                raise UsageError(
                    f"lengths: {lengths.shape[0]} entries for {features.shape[0]} clips"
                )
            if bool((lengths < 1).any()) or bool((lengths > features.shape[1]).any()):
                raise UsageError(f"lengths: each must be in 1..{features.shape[1]}")
            lengths = None if bool((lengths == features.shape[1]).all()) else lengths
        with self._autocast():
            out = self.model.embed_items(
                features, lengths=None if lengths is None else lengths.to(self.device)
            )
        return out.embeds.float().cpu()

    @torch.no_grad()
    def embed_images(self, grid: ArrayLike, pooled: ArrayLike | None = None) -> torch.Tensor:
        """A 7x7 feature grid [B, 49, D] (and its average pool [B, D]) -> [B, K, E]."""
        if not self.config.is_image:
            raise UsageError("embed_images: this is a video model; use embed_videos")
        grid = self._features(grid, "grid", 49)
        if pooled is not None:
            pooled = _as_tensor(pooled, "pooled", torch.float32)
            if tuple(pooled.shape) != (grid.shape[0], grid.shape[2]):
                raise UsageError(
                    f"pooled: expected [{grid.shape[0]}, {grid.shape[2]}], got {list(pooled.shape)}"
                )
            pooled = pooled.to(self.device, torch.float32)
        with self._autocast():
            out = self.model.embed_items(grid, pooled=pooled)
        return out.embeds.float().cpu()

    @torch.no_grad()
    def embed_sentences(self, sentences: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Sentences -> [B, K, E]: lower-cased Treebank tokens, unknown words as `<unk>`."""
        from mrw.text import collate_sentences

        if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
            raise UsageError("embed_sentences: expected a list of strings")
        if not sentences:
            raise UsageError("embed_sentences: no sentences")
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        chunks = []
        for start in range(0, len(sentences), batch_size):
            tokens, lengths = collate_sentences(sentences[start : start + batch_size], self.vocab)
            with self._autocast():
                out = self.model.embed_sentences(tokens.to(self.device), lengths.to(self.device))
            chunks.append(out.embeds.float().cpu())
        return torch.cat(chunks)


def load_model(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> PretrainedModel:
    """The model of a run folder (its best.pt), an `import-reference` folder or a checkpoint file."""
    from baselines.pienet.predict import load_checkpoint

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device}: no CUDA device is available")
    model, vocab, _ = load_checkpoint(path, device)
    return PretrainedModel(model, vocab, device)
