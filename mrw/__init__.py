"""mrw: datasets, features and the standard retrieval benchmark for MRW, TGIF and MS-COCO."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from mrw.version import __version__

if TYPE_CHECKING:  # checkers see the loader's own signature; `import mrw` stays free of torch
    from mrw.loader import load_dataset
else:

    def load_dataset(
        name: str,
        split: str | None = None,
        root: str | os.PathLike[str] | None = None,
        modality: str = "features",
        **kwargs: Any,
    ) -> Any:
        """Load a split (or all splits) as a torch Dataset; see `mrw.loader.load_dataset`."""
        from mrw.loader import load_dataset as _load_dataset

        return _load_dataset(name, split=split, root=root, modality=modality, **kwargs)


__all__ = ["__version__", "load_dataset"]
