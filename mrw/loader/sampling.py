"""Which frames of a clip an item takes, as the reference loader (PVSE) chose them."""

from __future__ import annotations

import random

SAMPLINGS = ("uniform", "random")
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
    """Which of a clip's `total` frames to take, as the reference loader chose them.

    - `num_frames=None`: every frame, in order.
    - `uniform` (evaluation): equal intervals from frame `edge` to `total - edge` (the edges
      are kept when the clip is too short to drop them), the first `num_frames` of them;
    - `random` (training): a random skip of 1 to 3 and a random start, `num_frames` frames on.
    Short clips repeat their last frame up to `num_frames`.
    """
    if total <= 0:
        return []
    if num_frames is None:
        return list(range(total))
    randint = (rng or random).randint
    if sampling == "random":
        skip = randint(1, MAX_RANDOM_SKIP)
        start = randint(0, max(0, total - skip * num_frames))
        idx = list(range(start, min(total, start + skip * num_frames), skip))
    else:
        start, end = (edge, total - edge) if total > 2 * edge else (0, total)
        skip = max(1, (end - start + 1) // num_frames)
        idx = list(range(start, end, skip))[:num_frames]
    return idx + [idx[-1]] * (num_frames - len(idx))
