"""Where every stage keeps its files under the root (interfaces.md, section 3).

Every module asks this one for paths, so the layout lives in one place.
"""

from __future__ import annotations

import os
from pathlib import Path

from mrw.errors import UsageError

DATASETS = ("mrw", "tgif", "coco")
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"valid": "val", "validation": "val"}


def default_root() -> Path:
    env = os.environ.get("MRW_HOME")
    return Path(env).expanduser() if env else Path("~/.cache/mrw").expanduser()


#: what `--root` may be given as: a path, or None for the default
Root = str | os.PathLike[str] | None


def resolve_root(root: Root) -> Path:
    return Path(root).expanduser() if root else default_root()


def check_dataset(name: str) -> str:
    name = str(name).lower()
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    return name


def normalize_split(split: str) -> str:
    """`valid` is accepted for `val`, as the MRW release names it."""
    s = _SPLIT_ALIASES.get(str(split).lower(), str(split).lower())
    if s not in SPLITS:
        raise UsageError(f"unknown split {split!r}: expected one of train, val, test")
    return s


def dataset_dir(root: Root, dataset: str) -> Path:
    return resolve_root(root) / check_dataset(dataset)


def catalog_path(root: Root, dataset: str, split: str) -> Path:
    return dataset_dir(root, dataset) / "catalog" / f"{normalize_split(split)}.parquet"


def release_cache_dir(root: Root, dataset: str) -> Path:
    """Downloaded official release files (never re-fetched once here)."""
    return dataset_dir(root, dataset) / "release"


def videos_dir(root: Root, dataset: str, split: str) -> Path:
    return dataset_dir(root, dataset) / "videos" / normalize_split(split)


def frames_dir(root: Root, dataset: str, split: str) -> Path:
    return dataset_dir(root, dataset) / "frames" / normalize_split(split)


def features_root(root: Root, dataset: str) -> Path:
    """The folder holding one `features/<backbone>/` folder per backbone extracted."""
    return dataset_dir(root, dataset) / "features"


def features_dir(root: Root, dataset: str, split: str, backbone: str = "resnet152") -> Path:
    return features_root(root, dataset) / backbone / normalize_split(split)


def features_dirs(root: Root, dataset: str, split: str) -> list[Path]:
    """The feature-stage folders of a split, one per backbone extracted, by name."""
    top = features_root(root, dataset)
    if not top.is_dir():
        return []
    split = normalize_split(split)
    return [d / split for d in sorted(top.iterdir()) if (d / split).is_dir()]


def preview_dir(root: Root, dataset: str, split: str) -> Path:
    """Where `mrw preview` writes its site unless told otherwise."""
    return dataset_dir(root, dataset) / "preview" / normalize_split(split)


def status_dir(stage_dir: Path) -> Path:
    """Each stage folder keeps one status row per catalog item under `status/`."""
    return Path(stage_dir) / "status"


STAGES = ("videos", "frames", "features")


def stage_dir(
    root: Root, dataset: str, split: str, stage: str, backbone: str | None = None
) -> Path:
    """The folder of one stage's shards: `videos`, `frames`, or `features` (of `backbone`)."""
    if stage == "videos":
        return videos_dir(root, dataset, split)
    if stage == "frames":
        return frames_dir(root, dataset, split)
    if stage == "features":
        return features_dir(root, dataset, split, backbone or "resnet152")
    raise UsageError(f"unknown stage {stage!r}: expected one of {', '.join(STAGES)}")
