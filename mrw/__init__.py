"""mrw: datasets, features and the standard retrieval benchmark for MRW, TGIF and MS-COCO."""

from mrw.version import __version__


def load_dataset(name, split=None, root=None, modality="features", **kwargs):
    """Load a split (or all splits) as a torch Dataset; see `mrw.loader.load_dataset`."""
    from mrw.loader import load_dataset as _load_dataset

    return _load_dataset(name, split=split, root=root, modality=modality, **kwargs)


__all__ = ["__version__", "load_dataset"]
