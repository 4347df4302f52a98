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


def device_name(gpu: bool) -> str:
    """`"cuda"` with `gpu` (a UsageError where there is none), else `"cpu"`; torch is imported
    only with `gpu`, so that CPU work that needs no model (evaluation) does not load it."""
    if not gpu:
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        raise UsageError(NO_CUDA)
    return "cuda"


def choose_device(gpu: bool) -> torch.device:
    """The `torch.device` of `device_name(gpu)`."""
    import torch  # not at import time: commands without a model need not load torch

    return torch.device(device_name(gpu))
