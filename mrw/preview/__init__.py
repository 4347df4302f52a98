"""`mrw preview`: a static site, opened from disk, of a split's items and a model's retrieval."""

from mrw.preview.site import PreviewReport, build_preview

__all__ = ["PreviewReport", "build_preview"]
