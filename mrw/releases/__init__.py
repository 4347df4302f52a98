"""Official releases -> the common catalog, one module per dataset."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mrw import paths
from mrw.catalog import write_catalog
from mrw.descriptors import load_descriptor
from mrw.errors import UsageError
from mrw.releases import coco, mrw, tgif
from mrw.releases.release import IngestReport, open_release

READERS = {"mrw": mrw.read_split, "tgif": tgif.read_split, "coco": coco.read_split}


def build_catalog(
    dataset: str,
    split: str,
    root: str | os.PathLike[str] | None = None,
    source: str | os.PathLike[str] | None = None,
    **release_limits: Any,
) -> tuple[Path, IngestReport]:
    """Read one split of a release (folder, archive, URL or the official one), validate it and
    write `<root>/<dataset>/catalog/<split>.parquet`. Hard problems raise UsageError and write
    nothing; soft ones (missing items, dead links, a size that differs from the published one) are
    reported. `release_limits` (timeout, max_bytes) bound the release download (`open_release`)."""
    dataset, split = paths.check_dataset(dataset), paths.normalize_split(split)
    desc = load_descriptor(dataset)
    report = IngestReport(
        dataset,
        split,
        source=str(source) if source else "the official release",
        expected_items=desc["splits"][split].get("items"),
    )
    with open_release(dataset, source, root, **release_limits) as release_dir:
        rows = READERS[dataset](Path(release_dir), split, desc, report)
    if not rows:
        raise UsageError(
            f"{report.source}: no item of the {split!r} split has an entry in the release "
            f"({len(report.missing)} ids missing)"
        )
    report.items = len(rows)
    report.sentences = sum(len(r["sentences"]) for r in rows)
    report.no_url = [r["id"] for r in rows if r["url"] is None]
    path = write_catalog(
        rows, root, dataset, split, metadata={"mrw.ingest": json.dumps(report.as_dict())}
    )
    return path, report


__all__ = ["READERS", "IngestReport", "build_catalog"]
