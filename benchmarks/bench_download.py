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

A second section (`--realistic-only` runs it alone) serves realistic clips, 640x360 24 fps 3 s
H.264 MP4s and 480x270 3 s GIFs (a few distinct clips made once with ffmpeg, under 1,500 URLs),
and compares `download_split` with validation on against a plain pooled fetch of the same URLs,
best of `--repeats` rounds: throughput ratio (target >= 0.5) and process CPU seconds per clip
(target <= 0.012). Comparing with video2dataset (optional, never a dependency): make a side
virtualenv (`python -m venv /tmp/v2d && /tmp/v2d/bin/pip install video2dataset 'pyarrow<16'`;
video2dataset 1.3.0 pins numpy 1.x, which newer pyarrow refuses) and pass
`--video2dataset /tmp/v2d/bin/video2dataset` (or set MRW_VIDEO2DATASET): after the rounds it runs
on the same URLs, 2 processes x 8 threads, while the servers stay up, and the section reports its
items/s (successes over its whole wall time, start-up included, and over its own download time)
against the pooled fetch. `--url-list FILE --serve-seconds N` keep the servers up for runs by hand.

    .venv/bin/python benchmarks/bench_download.py
    .venv/bin/python benchmarks/bench_download.py --realistic-only
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import _pooled  # noqa: E402  (benchmarks/_pooled.py: the reference fetch for worker processes)
import _results  # noqa: E402  (benchmarks/_results.py, beside this script)

from mrw.catalog import write_catalog  # noqa: E402
from mrw.demo.release import encode_raw_frames  # noqa: E402
from mrw.download import auto_processes, download_split, even_shares  # noqa: E402
from mrw.fetch import FetchConfig, Fetcher  # noqa: E402
from mrw.itempool import ProcessItemPool  # noqa: E402

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
    encode_raw_frames(
        ["-c:v", "libx264", "-preset", "ultrafast", "-qp", "30", "-pix_fmt", "yuv420p",
         "-movflags", "+faststart"],
        frames,
        12,
        path,
    )  # fmt: skip


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
    """`python -m mrw.demo serve` in a child process (127.0.0.1, a free port)."""

    def __init__(self, folder: Path, latency: float):
        port_file = Path(tempfile.mktemp(prefix="port-", dir=folder))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mrw.demo",
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


#: run in the child of `rss_child`: the download, while a thread samples the resident memory of
#: the child and of its item worker processes together (every 50 ms); prints the peak in KiB
_RSS_CODE = """
import os, sys, threading
sys.path.insert(0, {repo!r})
from mrw.download import download_split

def rss(pid):
    try:
        with open(f"/proc/{{pid}}/status") as fh:
            return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS"))
    except (OSError, StopIteration):
        return 0

def family():
    me = os.getpid()
    kids = []
    for task in os.listdir(f"/proc/{{me}}/task"):
        with open(f"/proc/{{me}}/task/{{task}}/children") as fh:
            kids += [int(p) for p in fh.read().split()]
    return [me] + kids

peak, done = [0], threading.Event()
def sample():
    while not done.wait(0.05):
        peak[0] = max(peak[0], sum(rss(p) for p in family()))
threading.Thread(target=sample, daemon=True).start()
r = download_split(root={root!r}, dataset="mrw", split="test", workers={workers},
                   progress=False, log=lambda m: None)
done.set()
print(peak[0])
sys.exit(0 if r.ok == {n} else 1)
"""


def rss_child(work: Path, urls: list[str]) -> tuple[float, float]:
    """Seconds and peak RSS (GiB) of a child process downloading `urls`, its item worker
    processes included (their resident memory summed with its own, sampled every 50 ms)."""
    root = work / "root-rss"
    write_catalog(catalog_rows(urls), root, "mrw", "test")
    code = _RSS_CODE.format(repo=str(REPO), root=str(root), workers=WORKERS, n=len(urls))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the {len(urls)}-item download did not succeed: {proc.stderr[-500:]}")
    return seconds, int(proc.stdout.split()[-1]) / (1024**2)  # KiB


# -- realistic clips: validation against a plain fetch ---------------------------------------------
REALISTIC_SECTION = "bench_download_realistic"
#: distinct clips of each kind; the items reuse them under distinct ids and URLs
DISTINCT = 4


def make_realistic_clips(folder: Path) -> list[Path]:
    """DISTINCT H.264 MP4s (640x360, 24 fps, 3 s) and as many GIFs (480x270, 12 fps, 3 s)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(DISTINCT):
        source = f"testsrc2=size=640x360:rate=24:duration=3,hue=h={k * 90}"
        mp4 = folder / f"clip{k}.mp4"
        subprocess.run(
            [
                *("ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i"),
                source,
                *("-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-threads"),
                *("1", "-movflags", "+faststart", str(mp4)),
            ],
            check=True,
        )
        gif = folder / f"clip{k}.gif"
        subprocess.run(
            [
                *("ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i"),
                f"testsrc2=size=480x270:rate=12:duration=3,hue=h={k * 90}",
                *("-vf", "split[a][b];[a]palettegen[p];[b][p]paletteuse", str(gif)),
            ],
            check=True,
        )
        out += [mp4, gif]
    return out


def realistic_items(folder: Path, clips: list[Path], n: int) -> list[str]:
    """n names under `folder/real`: two MP4s for every GIF, hard links to the distinct clips."""
    media = folder / "real"
    media.mkdir(parents=True, exist_ok=True)
    mp4s = [c for c in clips if c.suffix == ".mp4"]
    gifs = [c for c in clips if c.suffix == ".gif"]
    names = []
    for i in range(n):
        clip = gifs[(i // 3) % len(gifs)] if i % 3 == 2 else mp4s[i % len(mp4s)]
        p = media / f"r{i:06d}{clip.suffix}"
        if not p.exists():
            os.link(clip, p)
        names.append(f"real/{p.name}")
    return names


def _cpu_of(servers: list) -> float:
    """CPU seconds the server processes have used so far (user + system, from /proc)."""
    total = 0
    for s in servers:
        fields = Path(f"/proc/{s.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    """CPU seconds of this process's children that have ended (the download's item workers,
    reaped when it returns; the servers are still running, so not counted here)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(fn, servers: list) -> tuple[float, float, float]:
    """Wall seconds, the CPU seconds of this process (every thread) and of the worker processes
    `fn` started and ended, and the servers' CPU seconds, of `fn()`."""
    s0, c0, t0 = _cpu_of(servers), time.process_time() + _children_cpu(), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    return wall, time.process_time() + _children_cpu() - c0, _cpu_of(servers) - s0


def pooled_processes(urls: list[str], processes: int) -> float:
    """`pooled` spread over worker processes as the download spreads its items: `processes`
    processes sharing the threads and the per-host limit; the bytes are dropped in the workers."""
    shares, hosts = even_shares(WORKERS, processes), even_shares(4, processes)
    makers = [
        partial(_pooled.DropBytes, FetchConfig(timeout=30, retries=0, per_host=h)) for h in hosts
    ]
    pool = ProcessItemPool(makers, shares, "bench-fetch")
    try:
        pool.submit(urls[0]).result()  # the workers are up (their start is not the fetch's time)
        t0 = time.perf_counter()
        futures = [pool.submit(u) for u in urls]
        errors = [e for e in (f.result() for f in futures) if e]
        seconds = time.perf_counter() - t0
    finally:
        pool.close()
    if errors:
        raise SystemExit(f"pooled fetch in processes failed: {errors[0]}")
    return seconds


def probe_cpu(clips: list[Path], rounds: int = 20) -> dict[str, float]:
    """CPU seconds of one `probe_media` (the download-time check) per clip kind, in one thread."""
    from mrw.media import probe_media

    out = {}
    for kind in (".mp4", ".gif"):
        data = [c.read_bytes() for c in clips if c.suffix == kind]
        for d in data:
            probe_media(d)  # imports and first calls out of the measurement
        c0 = time.process_time()
        for _ in range(rounds):
            for d in data:
                probe_media(d)
        out[kind] = (time.process_time() - c0) / (rounds * len(data))
    return out


def run_video2dataset(binary: str, urls: list[str], work: Path) -> dict:
    """video2dataset on `urls` (2 processes x 8 threads, its defaults otherwise): its wall time,
    the largest download time its shards report, successes, failures and version."""
    import json

    listing, out = work / "v2d-urls.txt", work / "v2d-out"
    listing.write_text("\n".join(urls) + "\n")
    command = [binary, "--url_list", str(listing), "--output_folder", str(out)]
    command += ["--input_format", "txt", "--processes_count", "2", "--thread_count", "8"]
    t0 = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=work)
    wall = time.perf_counter() - t0
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))]
    python = Path(binary).parent / "python"
    version = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('video2dataset'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "wall": wall,
        "download": max((s.get("duration", 0.0) for s in stats), default=0.0),
        "successes": sum(s.get("successes", 0) for s in stats),
        "count": sum(s.get("count", 0) for s in stats),
        "returncode": proc.returncode,
        "version": version or "unknown version",
    }


def _v2d_text(v2d: dict | None, n: int, fetch_wall: float) -> str:
    if v2d is None:
        return "video2dataset: not run (`--video2dataset BIN`; the script's docstring says how)."
    ok, wall, own = v2d["successes"], v2d["wall"], v2d["download"]
    rate = ok / wall if wall else 0.0
    own_rate = ok / own if own else 0.0
    return (
        f"video2dataset {v2d['version']} on the same {n} URLs (2 processes x 8 threads, exit code "
        f"{v2d['returncode']}): {ok} of {v2d['count']} stored, {rate:.1f} items/s over its "
        f"{wall:.1f} s ({rate * fetch_wall / n:.2f}x the plain fetch), {own_rate:.1f} items/s "
        f"over the {own:.1f} s its shards report downloading ({own_rate * fetch_wall / n:.2f}x)."
    )


def realistic_main(args) -> None:
    load_before = os.getloadavg()
    n = args.realistic_items
    processes = auto_processes(n, WORKERS, 4)
    with tempfile.TemporaryDirectory(prefix="mrw-bench-realistic-") as tmp:
        work = Path(tmp)
        clips = make_realistic_clips(work / "clips")
        mp4_kb = np.mean([c.stat().st_size for c in clips if c.suffix == ".mp4"]) / 1e3
        gif_kb = np.mean([c.stat().st_size for c in clips if c.suffix == ".gif"]) / 1e3
        names = realistic_items(work, clips, n)
        probe = probe_cpu(clips)
        servers = [LocalServer(work, 0.0) for _ in range(SERVERS)]
        runs: dict[str, list[tuple[float, float, float]]] = {
            "fetch": [],
            "fetch_procs": [],
            "download": [],
            "download_1": [],
        }
        try:
            urls = [f"{servers[i % SERVERS].url}/{names[i]}" for i in range(n)]
            sequential(urls[: 2 * SERVERS])  # warm: every server answered
            for r in range(args.repeats):
                runs["fetch"].append(_timed(lambda: pooled(urls), servers))
                if processes > 1:
                    runs["fetch_procs"].append(
                        _timed(lambda: pooled_processes(urls, processes), servers)
                    )
                for key, procs in (("download", 0), ("download_1", 1)):
                    if key == "download_1" and processes == 1:
                        continue
                    root = work / f"root-{r}-{key}"
                    write_catalog(catalog_rows(urls), root, "mrw", "test")
                    reports: list = []

                    def download(root=root, reports=reports, procs=procs):
                        reports.append(
                            download_split(
                                root=root,
                                dataset="mrw",
                                split="test",
                                workers=WORKERS,
                                processes=procs,
                                progress=False,
                                log=lambda m: None,
                            )
                        )

                    runs[key].append(_timed(download, servers))
                    if reports[0].ok != n:
                        raise SystemExit(f"download: {reports[0].summary()}")
                    shutil.rmtree(root)
            v2d = run_video2dataset(args.video2dataset, urls, work) if args.video2dataset else None
            if args.url_list:
                Path(args.url_list).write_text("\n".join(urls) + "\n")
                print(f"wrote {n} URLs to {args.url_list}", flush=True)
            if args.serve_seconds:
                print(f"serving for {args.serve_seconds:g} s (Ctrl-C stops)", flush=True)
                with contextlib.suppress(KeyboardInterrupt):
                    time.sleep(args.serve_seconds)
        finally:
            for s in servers:
                s.stop()
    load_after = os.getloadavg()
    best = {k: min(v) for k, v in runs.items() if v}
    fetch_wall, fetch_cpu, _ = best["fetch"]
    dl_wall = best["download"][0]
    cpu_per_clip = min(c for _, c, _ in runs["download"]) / n
    ratio = fetch_wall / dl_wall
    rounds = ", ".join(
        f"{n / f[0]:.0f}/{n / d[0]:.0f}" for f, d in zip(runs["fetch"], runs["download"])
    )

    def row(what: str, key: str) -> str:
        wall, cpu, srv = best[key]
        return f"| {what} | {n} | {wall:.2f} | {n / wall:.1f} | {cpu / n:.4f} | {srv / n:.4f} |"

    table = [
        row("plain pooled fetch, no validation (the reference: one process)", "fetch"),
        row(
            f"`download_split` (`--processes` auto: {processes}): fetch + container parse + "
            "first frame + shards",
            "download",
        ),
    ]
    notes = []
    if processes > 1:
        table.insert(
            1,
            row(
                f"plain pooled fetch in {processes} processes, no validation (start not timed)",
                "fetch_procs",
            ),
        )
        table.append(row("`download_split --processes 1`", "download_1"))
        notes.append(
            f"For comparison, not the target: against the plain fetch spread over {processes} "
            f"processes as the download spreads its items, the download reaches "
            f"**{best['fetch_procs'][0] / dl_wall:.2f}x** (on 2 cores both are then bound by the "
            f"CPU, and the check costs more CPU than the fetch); with `--processes 1` (every item "
            f"in threads of one process, as before) it reaches "
            f"**{fetch_wall / best['download_1'][0]:.2f}x** the reference."
        )
    lines = [
        "## Download with validation on realistic clips (`benchmarks/bench_download.py --realistic-only`)",
        "",
        f"Machine: {machine()}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        "(the machine is shared: best of the rounds is reported).",
        "",
        f"Workload: {n} items on {SERVERS} servers on 127.0.0.1, two H.264 MP4s (640x360, 24 fps, 3 s, "
        f"{mp4_kb:.0f} KB) for every GIF (480x270, 12 fps, 3 s, {gif_kb:.0f} KB); {DISTINCT} distinct "
        f"clips of each kind under distinct ids and URLs; {WORKERS} threads, 4 connections per "
        f"host:port. Reference in the same run: the same URLs fetched by `mrw.fetch.Fetcher` in a "
        f"pool of {WORKERS} threads, bytes dropped, nothing checked. Best of {args.repeats} rounds "
        f"(items/s fetch/download per round: {rounds}). CPU counts this process and the worker "
        "processes a run started (their start included).",
        "",
        "| what | items | wall (s) | items/s | CPU-s per item | servers' CPU-s per item |",
        "|---|---:|---:|---:|---:|---:|",
        *table,
        "",
        f"Download / plain fetch: **{ratio:.2f}x** (target >= 0.5x; issue 19 measured 0.09x when the "
        f"download decoded every frame). CPU per clip: **{cpu_per_clip:.4f} s** (target <= 0.012; "
        "0.069 then). " + _v2d_text(v2d, n, fetch_wall),
        "",
        *([*notes, ""] if notes else []),
        f"Where the download's CPU goes: the check alone (`mrw.media.probe_media`, one thread) takes "
        f"{probe['.mp4'] * 1000:.2f} ms per MP4 (most of it decoding the first frame) and "
        f"{probe['.gif'] * 1000:.2f} ms per GIF; the rest is the fetch (the reference's "
        f"{fetch_cpu / n * 1000:.2f} ms), sha256, the trip back from the worker processes and "
        "writing the shards.",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        _results.write_section(REALISTIC_SECTION, body)
        print(f"wrote the {REALISTIC_SECTION} section of {RESULTS.relative_to(REPO)}")


def _positive(text: str) -> float:
    value = float(text)
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def write_section(body: str) -> None:
    _results.write_section(SECTION, body)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--rss-items", type=int, default=2000)
    ap.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    ap.add_argument(
        "--realistic-only", action="store_true", help="only the realistic-clips section"
    )
    ap.add_argument("--realistic-items", type=int, default=1500)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the realistic section")
    ap.add_argument("--url-list", help="write the realistic section's URLs to this file")
    ap.add_argument(
        "--video2dataset",
        default=os.environ.get("MRW_VIDEO2DATASET"),
        help="a video2dataset executable (in a side virtualenv) to run on the same URLs",
    )
    ap.add_argument(
        "--serve-seconds", type=_positive, help="keep the realistic servers up this long after"
    )
    args = ap.parse_args(argv)
    if args.realistic_items < 1 or args.repeats < 1:
        ap.error("--realistic-items and --repeats must be positive")
    if args.realistic_only:
        return realistic_main(args)

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
        f"| `download_split`: fetch + container parse + first frame + shards, no added latency | {n} | {t_full:.2f} | "
        f"{n / t_full:.1f} | |",
        f"| `download_split` in a child process, no added latency | {args.rss_items} | {t_rss:.2f} | "
        f"{args.rss_items / t_rss:.1f} | |",
        "",
        f"Pipeline fetch / sequential: **{speedup:.1f}x** (target >= 10x). Peak RSS of the "
        f"{args.rss_items}-item download, its worker processes included: **{gib:.2f} GiB** (target < 1 GiB).",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section(body)
        print(f"wrote the {SECTION} section of {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
