"""How fast `load_dataset` reads a features split, against pyarrow reading the same shards.

One run writes a synthetic features split of 5,000 items (MRW layout, shards of 1,000 items,
ResNet-152 width D = 2048, 8 to 24 frames per item, float16, row groups as `mrw.shards` writes
them) into a temporary root, then measures, in this one process:

- raw: `pyarrow.parquet.read_table` of every shard (all columns), the reference;
- map-style iteration `for item in ds` and streaming iteration, items/s and ratio to raw;
- `ds[i]` at 1,000 random `i`: median and 95th percentile latency, and the 1,000 reads in all
  from the shards, from `arrow_cache=True`, and from Hugging Face `datasets`
  (`Dataset.from_parquet` of the same shards, when installed), taking turns;
- resident memory added by opening the split (anonymous RSS; torch already imported), and
  after iterating it.

Prints the numbers and rewrites its own section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_loader.py [--items 5000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _results

import mrw.loader  # noqa: F401  - torch and the loader imported before measuring
from mrw import load_dataset, paths
from mrw.catalog import write_catalog
from mrw.loader.rowgroups import ARROW_CACHE_DIR
from mrw.shards import shard_ranges, write_shard

SECTION = "bench_loader"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
DIM = 2048
SHARD_SIZE = 1000
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("features", pa.binary()),
        ("num_frames", pa.int32()),
        ("dim", pa.int32()),
        ("timestamps", pa.list_(pa.float64())),
    ]
)


cpu_name = _results.cpu_name


def write_features_split(root: Path, n: int) -> int:
    """A catalog and feature shards of `n` items; returns the bytes of feature data written."""
    rng = np.random.default_rng(0)
    ids = [f"v{i:06d}" for i in range(n)]
    write_catalog(
        [
            {
                "id": i,
                "sentences": [f"my reaction when item {k} happens"],
                "url": None,
                "protocol_sentences": [0],
            }
            for k, i in enumerate(ids)
        ],
        root,
        "mrw",
        "test",
    )
    folder = paths.features_dir(root, "mrw", "test")
    total = 0
    for k, (a, b) in enumerate(shard_ranges(n, SHARD_SIZE)):
        rows = []
        for i in range(a, b):
            t = int(rng.integers(8, 25))
            feats = rng.standard_normal((t, DIM), dtype=np.float32).astype("<f2").tobytes()
            total += len(feats)
            rows.append(
                {
                    "id": ids[i],
                    "features": feats,
                    "num_frames": t,
                    "dim": DIM,
                    "timestamps": [j / 8 for j in range(t)],
                }
            )
        write_shard(
            folder,
            k,
            pa.Table.from_pylist(rows, schema=SCHEMA),
            [
                {"id": r["id"], "url": None, "status": "ok", "error": None, "attempts": 1}
                for r in rows
            ],
        )
    return total


def best_times(runs: dict, repeats: int) -> dict:
    """The best wall time of each run, the runs taking turns so that all see the same load."""
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def raw_read(files):
    for f in files:
        pq.read_table(f)


def iterate(ds):
    n = 0
    for item in ds:
        n += item["features"].shape[0] > 0
    return n


def random_reads(ds, picks) -> None:
    for i in picks:
        ds[i]


def rss() -> int:
    """Anonymous resident memory where Linux reports it (file-backed pages of libraries come and
    go with the page cache on a busy machine), else the whole RSS."""
    gc.collect()
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return psutil.Process().memory_info().rss


def run(n: int, root: Path, repeats: int = 9) -> dict:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    t0 = time.perf_counter()
    files = sorted(paths.features_dir(root, "mrw", "test").glob("shard-*.parquet"))
    if files and sum(pq.ParquetFile(f).metadata.num_rows for f in files) == n:
        data_bytes = sum(
            sum(len(b) for b in pq.read_table(f, columns=["features"]).column(0).to_pylist())
            for f in files
        )  # a split kept from an earlier run (--keep)
    else:
        data_bytes = write_features_split(root, n)
        files = sorted(paths.features_dir(root, "mrw", "test").glob("shard-*.parquet"))
    write_s = time.perf_counter() - t0
    # the Arrow copies (ours and HF's) are made, and timed, in this run
    shutil.rmtree(paths.features_dir(root, "mrw", "test") / ARROW_CACHE_DIR, ignore_errors=True)
    shutil.rmtree(root / "hf-cache", ignore_errors=True)
    raw_read(files)  # warm the page cache: every measurement below reads from memory

    pa.default_memory_pool().release_unused()
    before = rss()
    t0 = time.perf_counter()
    ds = load_dataset("mrw", split="test", root=root)
    open_s = time.perf_counter() - t0
    open_mb = (rss() - before) / 2**20
    assert len(ds) == n

    iterate(ds)
    pa.default_memory_pool().release_unused()
    after_iter_mb = (rss() - before) / 2**20
    stream = load_dataset("mrw", split="test", root=root, streaming=True)
    half = load_dataset("mrw", split="test", root=root, dtype=torch.float16)
    best = best_times(
        {
            "raw": lambda: raw_read(files),
            "map": lambda: iterate(ds),
            "stream": lambda: iterate(stream),
            "half": lambda: iterate(half),
        },
        repeats,
    )
    raw_s, map_s, stream_s, half_s = best["raw"], best["map"], best["stream"], best["half"]

    rng = random.Random(0)
    picks = [rng.randrange(n) for _ in range(1000)]
    lat = []
    for i in picks:
        t = time.perf_counter()
        ds[i]
        lat.append(time.perf_counter() - t)
    lat_ms = sorted(x * 1000 for x in lat)

    t0 = time.perf_counter()
    cached = load_dataset("mrw", split="test", root=root, arrow_cache=True)
    for s in range(len(files)):  # make the Arrow copy of every shard
        cached[s * SHARD_SIZE]
    cache_s = time.perf_counter() - t0
    reads = {
        "shards": lambda: random_reads(ds, picks),
        "arrow": lambda: random_reads(cached, picks),
    }
    hf_open_s = None
    try:
        import datasets
    except ImportError:
        datasets = None
    if datasets is not None:
        datasets.disable_progress_bars()
        t0 = time.perf_counter()
        hf = datasets.Dataset.from_parquet(
            [str(f) for f in files], cache_dir=str(root / "hf-cache"), keep_in_memory=False
        )
        hf_open_s = time.perf_counter() - t0
        reads["hf"] = lambda: random_reads(hf, picks)
    random_best = best_times(reads, 5)
    return {
        "load": load,
        "items": n,
        "feature_mb": data_bytes / 2**20,
        "write_s": write_s,
        "row_groups_per_shard": pq.ParquetFile(files[0]).num_row_groups,
        "raw_items_s": n / raw_s,
        "raw_mb_s": data_bytes / 2**20 / raw_s,
        "map_items_s": n / map_s,
        "stream_items_s": n / stream_s,
        "map_ratio": raw_s / map_s,
        "stream_ratio": raw_s / stream_s,
        "half_items_s": n / half_s,
        "half_ratio": raw_s / half_s,
        "getitem_median_ms": statistics.median(lat_ms),
        "getitem_p95_ms": lat_ms[int(0.95 * len(lat_ms))],
        "random_shards_s": random_best["shards"],
        "random_arrow_s": random_best["arrow"],
        "random_hf_s": random_best.get("hf"),
        "arrow_cache_s": cache_s,
        "hf_open_s": hf_open_s,
        "hf_version": datasets.__version__ if datasets is not None else None,
        "open_s": open_s,
        "open_rss_mb": open_mb,
        "after_iteration_rss_mb": after_iter_mb,
    }


def report(r: dict) -> str:
    ok = lambda cond: "yes" if cond else "**NO**"  # noqa: E731
    return "\n".join(
        [
            f"Machine: {cpu_name()}, {os.cpu_count()} cores (load average {r['load']:.1f} when the "
            f"run started); Python {platform.python_version()}, pyarrow {pa.__version__}, "
            f"numpy {np.__version__}, torch {torch.__version__}.",
            f"Workload: a synthetic MRW features split of {r['items']:,} items in shards of "
            f"{SHARD_SIZE} ({r['row_groups_per_shard']} row groups each), D = {DIM}, 8-24 frames per "
            f"item, {r['feature_mb']:.0f} MiB of float16 features; page cache warm; best of 9 turns (random reads: best of 5).",
            "",
            "| measure | value | target | met |",
            "|---|---|---|---|",
            f"| raw pyarrow `read_table` of the shards (reference) | {r['raw_items_s']:,.0f} items/s "
            f"({r['raw_mb_s']:,.0f} MiB/s) | | |",
            f"| `for item in ds` (map-style, float32 tensors) | {r['map_items_s']:,.0f} items/s = "
            f"{r['map_ratio']:.2f} x raw | >= 0.50 x raw | {ok(r['map_ratio'] >= 0.5)} |",
            f"| streaming iteration | {r['stream_items_s']:,.0f} items/s = {r['stream_ratio']:.2f} x raw "
            f"| >= 0.50 x raw | {ok(r['stream_ratio'] >= 0.5)} |",
            f"| `for item in ds` with `dtype=torch.float16` (as stored) | {r['half_items_s']:,.0f} "
            f"items/s = {r['half_ratio']:.2f} x raw | | |",
            f"| `ds[i]` at 1,000 random i, median (p95) | {r['getitem_median_ms']:.2f} ms "
            f"({r['getitem_p95_ms']:.2f} ms) | < 5 ms | {ok(r['getitem_median_ms'] < 5)} |",
            *random_rows(r),
            f"| resident memory added by opening the split ({r['open_s']:.2f} s) | "
            f"{r['open_rss_mb']:.1f} MiB | < 200 MB | {ok(r['open_rss_mb'] * 2**20 < 200e6)} |",
            f"| resident memory added after iterating it once | {r['after_iteration_rss_mb']:.1f} MiB "
            f"| bounded | |",
        ]
    )


def random_rows(r: dict) -> list[str]:
    ok = lambda cond: "yes" if cond else "**NO**"  # noqa: E731
    rows = [
        f"| 1,000 random `ds[i]` from the shards (Parquet row groups) | {r['random_shards_s']:.3f} s"
        + (f" = {r['random_shards_s'] / r['random_hf_s']:.2f} x HF" if r["random_hf_s"] else "")
        + " | | |",
        f"| 1,000 random `ds[i]` with `arrow_cache=True` (copy made in {r['arrow_cache_s']:.1f} s) "
        f"| {r['random_arrow_s']:.3f} s"
        + (
            f" = {r['random_arrow_s'] / r['random_hf_s']:.2f} x HF | <= 1.50 x HF | "
            f"{ok(r['random_arrow_s'] <= 1.5 * r['random_hf_s'])} |"
            if r["random_hf_s"]
            else " | <= 1.50 x HF | HF not installed |"
        ),
    ]
    if r["random_hf_s"]:
        rows.append(
            f"| 1,000 random `hf[i]`, HF datasets {r['hf_version']} `Dataset.from_parquet` of the "
            f"same shards (its Arrow copy made in {r['hf_open_s']:.1f} s) | {r['random_hf_s']:.3f} s "
            "(reference) | | |"
        )
    return rows


def write_section(text: str) -> None:
    _results.write_section(SECTION, f"## Loader (`benchmarks/bench_loader.py`)\n\n{text}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="Write the split here and keep it, or reuse the one an earlier run kept there "
        "(default: a temporary folder).",
    )
    parser.add_argument("--no-write", action="store_true", help="Print only; leave RESULTS.md.")
    args = parser.parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp(prefix="mrw-bench-loader-"))
    try:
        r = run(args.items, root)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    text = report(r)
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
