"""Which frames of a clip to take: the reference loader's rules (PVSE) and an even spread."""

from __future__ import annotations

import random

#: what a loader user may ask for
SAMPLINGS = ("uniform", "random")
#: every kept frame evenly spread over the whole clip, never repeated: what `extract-features
#: --max-frames` and the preview strips take, where the clip's span matters and no batch needs
#: a fixed length (the reference's `uniform` keeps the first intervals and pads)
SPREAD = "spread"
#: the reference loader drew a random skip of 1 to MAX_RAND_FRAME_SKIP frames for training
MAX_RANDOM_SKIP = 3
#: frames the reference loader dropped at each end of a TGIF clip in uniform sampling
EDGE_FRAMES = {"mrw": 0, "tgif": 6, "coco": 0}


def sample_frame_indices(
    total: int,
    num_frames: int | None,
    sampling: str = "uniform",
    edge: int = 0,
    rng: random.Random | None = None,
) -> list[int]:
    """Which of a clip's `total` frames to take.

    - `num_frames=None`: every frame, in order.
    - `uniform` (the reference's evaluation): equal intervals from frame `edge` to
      `total - edge` (the edges are kept when the clip is too short to drop them), the first
      `num_frames` of them;
    - `random` (the reference's training): a random skip of 1 to 3 and a random start,
      `num_frames` frames on.
    In both, short clips repeat their last frame up to `num_frames`.
    - `spread`: `num_frames` indices rounded from an even spread from the first frame to the
      last (every frame of a clip that has no more), no repeats.
    """
    if total <= 0:
        return []
    if num_frames is None:
        return list(range(total))
    if sampling == SPREAD:
        if total <= num_frames:
            return list(range(total))
        if num_frames == 1:
            return [0]
        step = (total - 1) / (num_frames - 1)
        return [round(i * step) for i in range(num_frames)]
    randint = rng.randint if rng is not None else random.randint
    if sampling == "random":
        skip = randint(1, MAX_RANDOM_SKIP)
        start = randint(0, max(0, total - skip * num_frames))
        idx = list(range(start, min(total, start + skip * num_frames), skip))
    else:
        start, end = (edge, total - edge) if total > 2 * edge else (0, total)
        skip = max(1, (end - start + 1) // num_frames)
        idx = list(range(start, end, skip))[:num_frames]
    return idx + [idx[-1]] * (num_frames - len(idx))
