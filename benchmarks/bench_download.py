"""Download throughput and memory of `mrw download` against local servers (issue 4, point 6).

One run measures, on this machine:
  1. 500 items of about 1 MB, 50 ms added before every response body: the pipeline's fetch stage
     (mrw.fetch.Fetcher in a pool of 16 threads, 4 connections per host) against a one-at-a-time
     sequential `requests.get` loop over the same URLs (the reference code's way);
  2. the whole `download_split` (fetch, decode validation, shards) on the same 500 items
     without added latency: items per second;
  3. the peak resident memory of a child process running `download_split` on 2,000 such items.
The items are spread over 8 servers on 127.0.0.1 (8 ports: the per-host limit is per host:port,
as real releases spread over many hosts). Prints the numbers and rewrites only its own section
of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_download.py
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import _results  # noqa: E402  (benchmarks/_results.py, beside this script)

from mrw.catalog import write_catalog  # noqa: E402
from mrw.download import download_split  # noqa: E402
from mrw.fetch import FetchConfig, Fetcher  # noqa: E402

RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "bench_download"
SERVERS = 8
WORKERS = 16
LATENCY = 0.05


def machine() -> str:
    model = _results.cpu_name()
    return f"{model}, {os.cpu_count()} cores visible, Python {platform.python_version()}"


def make_clip(path: Path) -> None:
    """A real H.264 MP4 of about 1 MB: 12 frames of seeded noise at 480x360, 12 fps."""
    frames = np.random.default_rng(0).integers(0, 256, size=(12, 360, 480, 3), dtype=np.uint8)
    subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            "480x360",
            "-r",
            "12",
            "-i",
            "pipe:0",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-qp",
            "30",
            "-pix_fmt",
            "yuv420p",
            "-threads",
            "1",
            "-fflags",
            "+bitexact",
            "-flags:v",
            "+bitexact",
            "-map_metadata",
            "-1",
            "-movflags",
            "+faststart",
            str(path),
        ],
        input=frames.tobytes(),
        check=True,
    )


def make_items(folder: Path, clip: Path, n: int) -> list[str]:
    """n names for the clip under `folder/media` (hard links: n distinct URLs, one file)."""
    media = folder / "media"
    media.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        p = media / f"{i:06d}.mp4"
        if not p.exists():
            os.link(clip, p)
        names.append(p.name)
    return names


def catalog_rows(urls: list[str]) -> list[dict]:
    return [
        {"id": Path(u).stem, "sentences": ["noise"], "url": u, "protocol_sentences": [0]}
        for u in urls
    ]


class LocalServer:
    """`python -m mrw.sample serve` in a child process (127.0.0.1, a free port)."""

    def __init__(self, folder: Path, latency: float):
        port_file = Path(tempfile.mktemp(prefix="port-", dir=folder))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mrw.sample",
                "serve",
                str(folder),
                "--latency",
                str(latency),
                "--port-file",
                str(port_file),
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("a sample server did not start")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{int(port_file.read_text())}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def sequential(urls: list[str]) -> float:
    import requests

    t0 = time.perf_counter()
    for u in urls:
        r = requests.get(u, timeout=30)
        r.raise_for_status()
        _ = r.content
    return time.perf_counter() - t0


def pooled(urls: list[str]) -> float:
    fetcher = Fetcher(FetchConfig(timeout=30, retries=0))
    t0 = time.perf_counter()

    def one(url):
        r = fetcher.fetch(url)
        return r.error_text  # the bytes are dropped, as the sequential loop drops them

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        errors = [e for e in pool.map(one, urls) if e]
    seconds = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"pooled fetch failed: {errors[0]}")
    return seconds


def rss_child(work: Path, urls: list[str]) -> tuple[float, float]:
    """Seconds and peak RSS (GiB) of a child process downloading `urls`."""
    root = work / "root-rss"
    write_catalog(catalog_rows(urls), root, "mrw", "test")
    # the child reports its own VmHWM: getrusage's ru_maxrss would carry this (bigger) process's
    # peak across fork+exec
    code = (
        "import sys; sys.path.insert(0, %r); from mrw.download import download_split; "
        "r = download_split(root=%r, dataset='mrw', split='test', workers=%d, progress=False, "
        "log=lambda m: None); "
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
        "print(hwm); sys.exit(0 if r.ok == %d else 1)"
    ) % (str(REPO), str(root), WORKERS, len(urls))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the {len(urls)}-item download did not succeed: {proc.stderr[-500:]}")
    return seconds, int(proc.stdout.split()[-1]) / (1024**2)  # VmHWM is in KiB


def write_section(body: str) -> None:
    _results.write_section(SECTION, body)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--rss-items", type=int, default=2000)
    ap.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="mrw-bench-download-") as tmp:
        work = Path(tmp)
        clip = work / "clip.mp4"
        make_clip(clip)
        size_mb = clip.stat().st_size / 1e6
        names = make_items(work, clip, max(args.items, args.rss_items))
        # the servers run in their own processes, so their work does not share this one's GIL
        slow = [LocalServer(work, LATENCY) for _ in range(SERVERS)]
        fast = [LocalServer(work, 0.0) for _ in range(SERVERS)]
        try:

            def urls(servers, n):
                return [f"{servers[i % SERVERS].url}/media/{names[i]}" for i in range(n)]

            slow_urls = urls(slow, args.items)
            sequential(
                urls(slow, SERVERS) + urls(fast, SERVERS)
            )  # warm: every server answered once
            t_pool = pooled(slow_urls)
            t_seq = sequential(slow_urls)
            root = work / "root-fast"
            write_catalog(catalog_rows(urls(fast, args.items)), root, "mrw", "test")
            t0 = time.perf_counter()
            report = download_split(
                root=root,
                dataset="mrw",
                split="test",
                workers=WORKERS,
                progress=False,
                log=lambda m: None,
            )
            t_full = time.perf_counter() - t0
            if report.ok != args.items:
                raise SystemExit(f"download: {report.summary()}")
            t_rss, gib = rss_child(work, urls(fast, args.rss_items))
        finally:
            for s in slow + fast:
                s.stop()

    n = args.items
    speedup = t_seq / t_pool
    lines = [
        "## Download throughput and memory (`benchmarks/bench_download.py`)",
        "",
        f"Machine: {machine()}",
        "",
        f"Workload: {n} items of {size_mb:.2f} MB (one real H.264 MP4, 12 frames 480x360, under {n} URLs) "
        f"spread over {SERVERS} servers on 127.0.0.1; {WORKERS} threads, 4 connections per host:port. "
        f"Reference in the same run: a one-at-a-time `requests.get` loop.",
        "",
        "| what | items | wall (s) | items/s | vs sequential |",
        "|---|---:|---:|---:|---:|",
        f"| sequential fetch, {LATENCY * 1000:.0f} ms added latency | {n} | {t_seq:.2f} | {n / t_seq:.1f} | 1.00x |",
        f"| pipeline fetch (mrw.fetch, pooled), {LATENCY * 1000:.0f} ms added latency | {n} | {t_pool:.2f} | "
        f"{n / t_pool:.1f} | {speedup:.1f}x |",
        f"| `download_split`: fetch + decode validation + shards, no added latency | {n} | {t_full:.2f} | "
        f"{n / t_full:.1f} | |",
        f"| `download_split` in a child process, no added latency | {args.rss_items} | {t_rss:.2f} | "
        f"{args.rss_items / t_rss:.1f} | |",
        "",
        f"Pipeline fetch / sequential: **{speedup:.1f}x** (target >= 10x). Peak RSS of the "
        f"{args.rss_items}-item download: **{gib:.2f} GiB** (target < 1 GiB).",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section(body)
        print(f"wrote the {SECTION} section of {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
