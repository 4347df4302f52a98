"""How long `mrw preview --limit 500` takes on a 50,000-item split, and how much it writes.

One run writes a synthetic MRW split of 50,000 items into a temporary root (catalog, video
status and video shards with the small columns, frame shards of 4 tiny JPEG frames per item,
2% failed downloads of four classes, shards of 1,000 items), then measures in this one process:

- reference: `pyarrow.parquet.read_table` of every frame shard (all columns), once;
- `build_preview(limit=500)`: seconds, ratio to the reference, bytes written, row groups read;
- `mrw preview --limit 500` in a new process (imports included): seconds.

Prints the numbers and rewrites its own section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_preview.py [--items 50000] [--limit 500]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _results

from mrw import paths, shards
from mrw.catalog import write_catalog
from mrw.download import VIDEO_SCHEMA
from mrw.frames import FRAMES_SCHEMA, PARQUET_OPTIONS, encode_jpeg

SECTION = "bench_preview"
SHARD_SIZE = 1000
FAILURES = ("http_404", "timeout", "not_video", "too_large")


def _tiny_frames(count: int = 8, side: int = 32) -> list[bytes]:
    """A few small, distinct JPEG frames reused by every item (cheap to write, real to decode)."""
    out = []
    for k in range(count):
        img = np.zeros((side, side, 3), np.uint8)
        img[:, : side * (k + 1) // count] = (40 + 25 * k, 200 - 20 * k, 90)
        out.append(encode_jpeg(img, 80))
    return out


def synthesize_split(
    root: Path, items: int, dataset: str = "mrw", split: str = "test", fail_every: int = 50
) -> dict[str, str]:
    """A split of `items` clips with frames extracted; returns id -> failure class of those
    that failed. Media bytes are placeholders: the preview reads frames, never the videos."""
    ids = [f"c{n:06d}" for n in range(items)]
    write_catalog(
        (
            {
                "id": i,
                "sentences": [f"clip number {n} <b>of</b> the synthetic split"],
                "url": f"http://media-{n % 5}.invalid/{i}.mp4",
                "protocol_sentences": [0],
            }
            for n, i in enumerate(ids)
        ),
        root,
        dataset,
        split,
    )
    failed = {
        i: FAILURES[(n // fail_every) % len(FAILURES)]
        for n, i in enumerate(ids)
        if n % fail_every == 7
    }
    frames = _tiny_frames()
    videos_dir, frames_dir = (
        paths.videos_dir(root, dataset, split),
        paths.frames_dir(root, dataset, split),
    )
    for index, (a, b) in enumerate(shards.shard_ranges(items, SHARD_SIZE)):
        chunk = ids[a:b]
        ok = [i for i in chunk if i not in failed]
        status = [
            {
                "id": i,
                "url": f"http://media-{(a + k) % 5}.invalid/{i}.mp4",
                "status": "failed" if i in failed else "ok",
                "error": f"{failed[i]}: synthetic" if i in failed else None,
                "attempts": 1,
            }
            for k, i in enumerate(chunk)
        ]
        video = pa.Table.from_pylist(
            [
                {
                    "id": i,
                    "video": b"",
                    "format": "mp4",
                    "sha256": "",
                    "num_frames": 16,
                    "fps": 8.0,
                    "width": 32,
                    "height": 32,
                    "duration": 2.0,
                }
                for i in ok
            ],
            schema=VIDEO_SCHEMA,
        )
        shards.write_shard(videos_dir, index, video, status)
        k = len(frames) // 2
        frame_rows = pa.Table.from_pylist(
            [
                {
                    "id": i,
                    "frames": frames[j % k : j % k + k],
                    "timestamps": [t / 8 for t in range(k)],
                    "num_frames": k,
                    "width": 32,
                    "height": 32,
                }
                for j, i in enumerate(ok)
            ],
            schema=FRAMES_SCHEMA,
        )
        shards.write_shard(
            frames_dir,
            index,
            frame_rows,
            [s for s in status if s["status"] == "ok"],
            **PARQUET_OPTIONS,
        )
    return failed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--no-write", action="store_true", help="Print only; leave RESULTS.md alone.")
    args = ap.parse_args(argv)

    from mrw.preview import build_preview

    tmp = Path(tempfile.mkdtemp(prefix="bench-preview-"))
    try:
        root = tmp / "root"
        t0 = time.perf_counter()
        synthesize_split(root, args.items)
        synth_s = time.perf_counter() - t0
        frames_dir = paths.frames_dir(root, "mrw", "test")
        t0 = time.perf_counter()
        for f in shards.data_shards(frames_dir):
            pq.read_table(f)
        ref_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = build_preview(
            root=root,
            dataset="mrw",
            split="test",
            out=tmp / "site",
            limit=args.limit,
            echo=lambda s: None,
        )
        preview_s = time.perf_counter() - t0
        # the command as a user types it: a fresh interpreter, imports included
        command = ["-m", "mrw.cli", "preview", "--root", str(root), "--split", "test"]
        command += ["--limit", str(args.limit), "--out", str(tmp / "site-cli")]
        t0 = time.perf_counter()
        subprocess.run([sys.executable, *command], check=True, capture_output=True)
        cli_s = time.perf_counter() - t0
        frame_bytes = sum(f.stat().st_size for f in shards.data_shards(frames_dir))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    lines = [
        "## Preview of a large split (`benchmarks/bench_preview.py`)",
        "",
        f"Machine: {_results.cpu_name()}; {args.items:,} items (frame shards {frame_bytes / 1e6:.1f} MB, "
        f"written in {synth_s:.1f} s), `--limit {args.limit}`, default page size.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| reference: read every frame shard once (pyarrow) | {ref_s:.2f} s |",
        f"| `build_preview(limit={args.limit})` | {preview_s:.2f} s ({preview_s / ref_s:.1f}x the reference) |",
        f"| `mrw preview --limit {args.limit}` (a new process) | {cli_s:.2f} s ({cli_s / ref_s:.1f}x the reference) |",
        f"| written | {report.bytes_written / 1e6:.2f} MB in {report.pages} pages, {report.work.strips_written} strips |",
        f"| row groups read | {report.work.row_groups_read} ({report.work.media_bytes_read / 1e6:.1f} MB of frames) |",
        "",
        "Target: under a minute and under 50 MB written.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        _results.write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
