"""The pooled fetch of two trees of this repository, alternated in one run against the same servers.

A before/after check for changes to `mrw.fetch`: each round runs `bench_download.pooled` over the
same URLs in a child process, first with the tree given by `--before` (e.g. `git archive <commit> |
tar -x -C /tmp/before`), then with this tree; the figure is the ratio of the medians, so the
machine's load at the time cancels out as far as alternation allows. Prints only.

    .venv/bin/python benchmarks/ab_fetch.py --before /tmp/before --latency 0.05 --items 300 --rounds 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import bench_download as bench  # noqa: E402

CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]);"
    "import bench_download as b; urls = open(sys.argv[3]).read().split();"
    "b.pooled(urls[:20]); print(b.pooled(urls))"
)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, help="the other tree (a folder with mrw/)")
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--items", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mrw-ab-"))
    clip = work / "clip.mp4"
    bench.make_clip(clip)
    servers = []
    try:
        for s in range(bench.SERVERS):
            folder = work / f"s{s}"
            bench.make_items(folder, clip, args.items // bench.SERVERS + 1)
            servers.append(bench.LocalServer(folder, args.latency))
        urls = [
            f"{servers[i % bench.SERVERS].url}/media/{i // bench.SERVERS:06d}.mp4"
            for i in range(args.items)
        ]
        (work / "urls.txt").write_text("\n".join(urls))
        seconds: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.rounds):
            for name, tree in (("before", Path(args.before).resolve()), ("after", REPO)):
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, str(tree), str(HERE), str(work / "urls.txt")],
                    capture_output=True,
                    text=True,
                    cwd=tree,
                    env={**os.environ, "PYTHONPATH": str(tree)},
                    timeout=600,
                )
                if out.returncode:
                    raise SystemExit(f"{name}: {out.stderr[-800:]}")
                seconds[name].append(float(out.stdout.split()[-1]))
    finally:
        for s in servers:
            s.stop()
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name}: median {median:.3f} s = {args.items / median:.1f} items/s  {values}")
    ratio = statistics.median(seconds["before"]) / statistics.median(seconds["after"])
    print(f"after / before throughput: {ratio:.3f}")


if __name__ == "__main__":
    main()
