"""The PIE-Net / PVSE baseline; `load_model(DIR)` embeds your own videos, images and sentences."""

from __future__ import annotations

from typing import Any

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    # torch loads only when the API is used, so `python -m baselines.pienet --help` stays quick
    if name == "load_model":
        from baselines.pienet.inference import load_model

        return load_model
    raise AttributeError(f"module 'baselines.pienet' has no attribute {name!r}")
