"""The one place a command turns its `--gpu` flag into the device it computes on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mrw.errors import UsageError

if TYPE_CHECKING:
    import torch

NO_CUDA = (
    "--gpu was given but CUDA is not available on this machine "
    "(no CUDA device or a CPU-only torch build): run without --gpu"
)


def choose_device(gpu: bool) -> torch.device:
    """CUDA with `gpu` (a UsageError where there is none), else the CPU."""
    import torch  # not at import time: commands without a model need not load torch

    if not gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError(NO_CUDA)
    return torch.device("cuda")
