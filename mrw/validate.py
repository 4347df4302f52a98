"""Re-check a split's video shards against its catalog: what `mrw validate` reports.

Every row must pass the download's check and then decode frame by frame (which the download
does not do), its `num_frames` must be what that decode counts, its `sha256` must match its bytes,
no id may appear twice or outside its shard's catalog range, and every catalog item must have
exactly one status row, `ok` exactly when it has a data row.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from mrw import paths, shards
from mrw.catalog import read_catalog
from mrw.errors import UsageError
from mrw.media import MediaError, MediaLimits, probe_media, require_ffprobe

MAX_LISTED = 20  # problems printed per kind; all are counted


@dataclass
class ValidationReport:
    dataset: str
    split: str
    stage_dir: Path
    catalog_items: int = 0
    rows: int = 0
    ok_status: int = 0
    failed_status: int = 0
    problems: dict[str, list[str]] = field(default_factory=dict)  # kind -> list of messages

    def add(self, kind: str, message: str) -> None:
        self.problems.setdefault(kind, []).append(message)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def problem_count(self) -> int:
        return sum(len(v) for v in self.problems.values())

    def format(self) -> str:
        lines = [
            f"{self.dataset}/{self.split}: {self.catalog_items} catalog items, {self.rows} video rows, "
            f"status {self.ok_status} ok / {self.failed_status} failed ({self.stage_dir})"
        ]
        if self.ok:
            lines.append(
                "all good: every row decodes, checksums match, no duplicates, one status row per item"
            )
        for kind in sorted(self.problems):
            msgs = self.problems[kind]
            lines.append(f"{kind}: {len(msgs)}")
            lines.extend(f"  {m}" for m in msgs[:MAX_LISTED])
            if len(msgs) > MAX_LISTED:
                lines.append(f"  ... and {len(msgs) - MAX_LISTED} more")
        return "\n".join(lines)


def _check_row(row: dict, limits: MediaLimits) -> list[tuple[str, str]]:
    out = []
    data = row.get("video") or b""
    digest = hashlib.sha256(data).hexdigest()
    if digest != row.get("sha256"):
        out.append(
            (
                "checksum",
                f"id {row['id']!r}: sha256 of the bytes is {digest[:12]}..., "
                f"the row says {str(row.get('sha256'))[:12]}...",
            )
        )
    try:  # thorough: ffprobe decodes every frame and reports concealed errors too
        info = probe_media(data, limits, thorough=True)
    except MediaError as e:
        out.append(("decode", f"id {row['id']!r}: {e}"))
        return out
    if info.num_frames != row.get("num_frames"):
        out.append(
            (
                "metadata",
                f"id {row['id']!r}: {info.num_frames} frames decode, the row says {row.get('num_frames')}",
            )
        )
    return out


def validate_split(
    root: str | os.PathLike[str] | None = None,
    dataset: str = "mrw",
    split: str = "test",
    workers: int = 4,
    decode: bool = True,
) -> ValidationReport:
    """Check the split's video shards and status rows; the report lists every problem."""
    dataset, split = paths.check_dataset(dataset), paths.normalize_split(split)
    catalog = read_catalog(root, dataset, split, columns=["id"])
    stage_dir = paths.videos_dir(root, dataset, split)
    manifest = shards.read_manifest(stage_dir)
    if manifest is None:
        raise UsageError(
            f"no video shards for {dataset}/{split} under {paths.resolve_root(root)}: "
            f"run `mrw download --dataset {dataset} --split {split}` first"
        )
    if decode:
        require_ffprobe()
    report = ValidationReport(dataset, split, stage_dir)
    cat_ids = catalog.column("id").to_pylist()
    report.catalog_items = len(cat_ids)
    position = {i: n for n, i in enumerate(cat_ids)}
    size = int(manifest.get("shard_size") or 0) or None
    limits = MediaLimits(max_bytes=int(manifest.get("max_bytes") or MediaLimits.max_bytes))

    # -- status rows --
    status_of: dict[str, list[str]] = {}
    for f in shards.status_shards(stage_dir):
        try:
            rows = shards.read_parquet(f).to_pylist()
        except UsageError as e:
            report.add("unreadable", f"status/{f.name}: {str(e)[:240]}")
            continue
        idx = shards.shard_index(f)
        for r in rows:
            status_of.setdefault(r["id"], []).append(r["status"])
            report.ok_status += r["status"] == "ok"
            report.failed_status += r["status"] != "ok"
            if r["id"] not in position:
                report.add("unknown_id", f"status/{f.name}: id {r['id']!r} is not in the catalog")
            elif size and position[r["id"]] // size != idx:
                report.add(
                    "wrong_shard",
                    f"status/{f.name}: id {r['id']!r} belongs in shard {position[r['id']] // size}",
                )
    for i in cat_ids:
        n = len(status_of.get(i, []))
        if n == 0:
            report.add("missing_status", f"id {i!r} has no status row")
        elif n > 1:
            report.add("duplicate_status", f"id {i!r} has {n} status rows")

    # -- data rows --
    seen: Counter[str] = Counter()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for f in shards.data_shards(stage_dir):
            idx = shards.shard_index(f)
            try:
                pf = pq.ParquetFile(f)
                batches = pf.iter_batches(batch_size=16)
                for batch in batches:
                    rows = batch.to_pylist()
                    for r in rows:
                        report.rows += 1
                        seen[r["id"]] += 1
                        if seen[r["id"]] == 2:
                            report.add(
                                "duplicate_id", f"{f.name}: id {r['id']!r} appears more than once"
                            )
                        if r["id"] not in position:
                            report.add(
                                "unknown_id", f"{f.name}: id {r['id']!r} is not in the catalog"
                            )
                        elif size and position[r["id"]] // size != idx:
                            report.add(
                                "wrong_shard",
                                f"{f.name}: id {r['id']!r} belongs in shard "
                                f"{position[r['id']] // size}",
                            )
                        if "ok" not in status_of.get(r["id"], ["ok"]):
                            report.add(
                                "status_mismatch",
                                f"{f.name}: id {r['id']!r} has a row but its status is failed",
                            )
                    if decode:
                        for problems in pool.map(lambda r: _check_row(r, limits), rows):
                            for kind, msg in problems:
                                report.add(kind, f"{f.name}: {msg}")
                    else:
                        for r in rows:
                            if hashlib.sha256(r["video"] or b"").hexdigest() != r["sha256"]:
                                report.add(
                                    "checksum", f"{f.name}: id {r['id']!r}: sha256 does not match"
                                )
            except Exception as e:  # a damaged file: name it and go on with the others
                if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                    raise
                report.add("unreadable", f"{f.name}: {type(e).__name__}: {str(e)[:120]}")
    for i, states in status_of.items():
        if "ok" in states and not seen.get(i):
            report.add("status_mismatch", f"id {i!r} has status ok but no video row")
    return report
