"""Dataset descriptors: the machine-readable facts in `metadata/<dataset>.json`."""

from __future__ import annotations

import json
import os
import sys
from functools import cache
from pathlib import Path

from mrw import paths


def metadata_dir() -> Path:
    """`$MRW_METADATA`, else the repository's `metadata/` beside the package (a source or
    editable install), else `<prefix>/share/mrw/metadata` (a wheel's data files)."""
    env = os.environ.get("MRW_METADATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "metadata", Path(sys.prefix) / "share" / "mrw" / "metadata"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the metadata/ folder of the mrw package is missing")


@cache
def load_descriptor(dataset: str) -> dict:
    with open(metadata_dir() / f"{paths.check_dataset(dataset)}.json") as fh:
        return json.load(fh)


def published_size(dataset: str, split: str) -> int | None:
    return load_descriptor(dataset)["splits"].get(paths.normalize_split(split), {}).get("items")
