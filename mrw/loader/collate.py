"""Batching `frames` items, whose clips differ in length and in frame size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from mrw.errors import UsageError

if TYPE_CHECKING:
    from mrw.text import Vocabulary


def collate_frames(batch: Sequence[dict], vocab: Vocabulary | None = None) -> dict:
    """Collate `modality="frames"` items into one batch, in the order given.

    - `frames` uint8 `[B, T, H, W, 3]`: each clip padded with zeros to the batch's longest clip
      (T) and largest frame (H, W, at the bottom and right); `frame_lengths` `[B]` and
      `frame_sizes` `[B, 2]` (height, width) say what each item really holds;
    - `timestamps` float64 `[B, T]` and `frame_indices` `[B, T]` padded with zeros alike;
    - with a vocabulary, `tokens` `[B, L]` and `token_lengths` `[B]` (`mrw.text`);
    - every other field becomes a list.

    For one frame size without padding, pass `transform=resize_frames((H, W))` to
    `load_dataset`: its items then stack as they are.
    """
    if not batch:
        raise UsageError("cannot collate an empty batch")
    if any("frames" not in item for item in batch):
        raise UsageError("collate_frames takes items of load_dataset(..., modality='frames')")
    frames = [item["frames"] for item in batch]
    if any(f.dim() != 4 or f.shape[-1] != 3 for f in frames):
        raise UsageError("collate_frames expects frames of shape [T, H, W, 3]")
    t = max(f.shape[0] for f in frames)
    h = max(f.shape[1] for f in frames)
    w = max(f.shape[2] for f in frames)
    out: dict = {"frames": torch.zeros((len(frames), t, h, w, 3), dtype=frames[0].dtype)}
    for b, f in enumerate(frames):
        out["frames"][b, : f.shape[0], : f.shape[1], : f.shape[2]] = f
    out["frame_lengths"] = torch.tensor([f.shape[0] for f in frames], dtype=torch.long)
    out["frame_sizes"] = torch.tensor([[f.shape[1], f.shape[2]] for f in frames], dtype=torch.long)
    for key in batch[0]:
        if key == "frames":
            continue
        values = [item[key] for item in batch]
        if key in ("timestamps", "frame_indices") and all(
            isinstance(v, torch.Tensor) and v.dim() == 1 for v in values
        ):
            padded = torch.zeros((len(values), t), dtype=values[0].dtype)
            for b, v in enumerate(values):
                padded[b, : min(len(v), t)] = v[:t]
            out[key] = padded
        else:
            out[key] = values
    if vocab is not None:
        from mrw.text import collate_sentences

        out["tokens"], out["token_lengths"] = collate_sentences(
            [item["sentence"] for item in batch], vocab
        )
    return out


class resize_frames:  # used like a function: transform=resize_frames((224, 224))
    """A `transform` for `modality="frames"` that resizes every frame to `size` (height,
    width) with bilinear interpolation, so that items of one `num_frames` stack as they are."""

    def __init__(self, size: tuple[int, int]):
        if len(size) != 2 or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size
        ):
            raise UsageError(f"size must be (height, width) in positive pixels, got {size!r}")
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.shape[0] == 0:
            return torch.zeros((0, *self.size, 3), dtype=frames.dtype)
        x = frames.permute(0, 3, 1, 2).float()
        x = torch.nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x.round().clamp(0, 255).to(frames.dtype).permute(0, 2, 3, 1).contiguous()
