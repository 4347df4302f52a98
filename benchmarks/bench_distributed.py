"""The stage runner's executors on the same 2 CPUs: local vs Ray, and local before vs after.

One run measures, on this machine, in fresh child processes (one per measurement, alternating):
  1. `download` of ITEMS sample clips from a server on 127.0.0.1 that adds LATENCY seconds before
     every response body: items/s with the local executor, with `--distributor ray` on a local
     Ray cluster of 2 CPUs (started before the clock starts; its start-up is reported apart), and
     with the code of another commit (`--before REV`, default: the parent of the stage runner,
     unpacked from git into a scratch folder);
  2. `extract-frames` of those video shards: frames/s, the same three ways.
Each figure is the best of `--repeat` runs; the ratios are what counts (Ray / local >= 0.8, local
after / before >= 1, within the noise of a shared machine). Prints the numbers and rewrites only
its own section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_distributed.py [--before REV] [--repeat 2]
    .venv/bin/python benchmarks/bench_distributed.py --gpu-only   # scripts/gpu_check.sh runs it
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import _results  # noqa: E402  (benchmarks/_results.py, beside this script)

from mrw.demo import SampleServer, write_sample_release  # noqa: E402
from mrw.releases import build_catalog  # noqa: E402

SECTION = "bench_distributed"
ITEMS = 144
SHARD_SIZE = 12
FRAME_SHARDS = 6  # extract-frames runs on the first of the video shards
WORKERS = 8
LATENCY = 0.05
CPUS = 2

#: the child: one measurement, its figures as JSON on the last line of stdout
CHILD = r"""
import json, sys, time
args = json.loads(sys.argv[1])
from mrw.download import download_split
from mrw.frames import extract_frames
extra, startup = {}, 0.0
if args["distributor"] == "ray":
    import ray
    from mrw.stage import Distribution
    t = time.perf_counter()
    ray.init(num_cpus=args["cpus"], include_dashboard=False, log_to_driver=False)
    @ray.remote(num_cpus=1)
    def warm():  # a started cluster: its workers have imported the stages once
        import mrw.download, mrw.frames
        time.sleep(0.2)
    ray.get([warm.remote() for _ in range(2 * args["cpus"])])
    startup = time.perf_counter() - t
    extra = {"distribution": Distribution("ray")}
if args["stage"] == "download":
    t = time.perf_counter()
    report = download_split(root=args["root"], split="test", workers=args["workers"],
                            shard_size=args["shard_size"], progress=False, log=lambda m: None,
                            **extra)
    seconds = time.perf_counter() - t
    count = report.ok + report.failed
else:
    workers = 1 if args["distributor"] == "ray" else args["cpus"]
    t = time.perf_counter()
    report = extract_frames(root=args["root"], split="test", workers=workers, progress=False,
                            **extra)
    seconds = time.perf_counter() - t
    count = report.frames
print(json.dumps({"seconds": seconds, "count": count, "startup": startup}))
"""


def machine() -> str:
    return (
        f"{_results.cpu_name()}, {os.cpu_count()} cores visible, Python {platform.python_version()}"
    )


def measure(code_dir: Path, stage: str, distributor: str, root: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code_dir), "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    args = {
        "root": str(root),
        "stage": stage,
        "distributor": distributor,
        "cpus": CPUS,
        "workers": WORKERS,
        "shard_size": SHARD_SIZE,
    }
    # both executors get the same 2 CPUs
    cmd = ["taskset", "-c", "0,1"] if shutil.which("taskset") and (os.cpu_count() or 1) > 2 else []
    res = subprocess.run(
        [*cmd, sys.executable, "-c", CHILD, json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(code_dir),
        timeout=600,
    )
    if res.returncode != 0:
        raise SystemExit(f"{stage}/{distributor} in {code_dir} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def before_tree(rev: str, into: Path) -> Path:
    """The `mrw` package as it was at `rev`, unpacked from git into a scratch folder."""
    path = into / "before"
    path.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, "mrw"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(path)], input=archive, check=True)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default=None, help="The commit to compare the local path with.")
    ap.add_argument("--repeat", type=int, default=2, help="Runs per figure (the best counts).")
    ap.add_argument("--no-write", action="store_true", help="Do not touch RESULTS.md.")
    ap.add_argument(
        "--gpu-only",
        action="store_true",
        help="Instead: extract-features --gpu with the JPEG frames decoded on the GPU and in the "
        "DataLoader workers, against pure forward (section bench_distributed_gpu).",
    )
    ap.add_argument("--clips", type=int, default=960, help="Clips of the --gpu-only split.")
    opts = ap.parse_args(argv)
    if opts.repeat < 1 or opts.clips < 1:
        ap.error("--repeat and --clips must be positive integers")
    if opts.gpu_only:
        text = gpu_decode_section(opts.clips)
        print(text)
        if not opts.no_write:
            _results.write_section(SECTION + "_gpu", text)
        return 0
    rev = opts.before or _stage_runner_parent()
    with tempfile.TemporaryDirectory(prefix="mrw-bench-dist-") as tmp:
        tmp = Path(tmp)
        results = _run(tmp, before_tree(rev, tmp), opts.repeat)
    text = _format(results, rev)
    print(text)
    if not opts.no_write:
        _results.write_section(SECTION, text)
    return 0


def gpu_decode_section(clips: int) -> str:
    """End-to-end `extract-features --gpu` (resnet152) with the JPEGs decoded on the GPU and in
    the workers, each against the faster of two pure-forward runs around it."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("--gpu-only given but CUDA is not available")
    import bench_extract  # beside this script: the same split and pure-forward clock

    from mrw import paths
    from mrw.features import build_backbone, extract_features, largest_batch, place_trunk
    from mrw.frames import extract_frames

    device = torch.device("cuda")
    rows = []
    with tempfile.TemporaryDirectory(prefix="mrw-bench-gpu-decode-") as tmp:
        root = Path(tmp)
        bench_extract.make_split(root, root / "media", clips)
        extract_frames(root=root, split="test", progress=False)
        trunk = place_trunk(build_backbone("resnet152", "none")[0], device)
        batch = largest_batch(trunk, device, grid=False)
        del trunk
        torch.cuda.empty_cache()
        for on_device in (True, False):
            before = bench_extract.pure_forward_fps("resnet152", device, batch, batches=4)
            shutil.rmtree(paths.dataset_dir(root, "mrw") / "features", ignore_errors=True)
            report = extract_features(
                root=root,
                split="test",
                backbone="resnet152",
                weights="none",
                gpu=True,
                batch_size=batch,
                device_decode=on_device,
                progress=False,
            )
            fps = report.frames / report.elapsed_s
            after = bench_extract.pure_forward_fps(
                "resnet152", device, batch, batches=max(4, report.frames // batch)
            )
            pure = max(before, after)
            rows.append(
                f"| {'GPU (nvJPEG)' if on_device else 'DataLoader workers'} | {report.frames} | "
                f"{fps:,.0f} | {pure:,.0f} | {fps / pure:.2f} | >= 0.90 |"
            )
        name = torch.cuda.get_device_name(0)
    return "\n".join(
        [
            "## extract-features --gpu: JPEG frames decoded on the GPU vs in the workers",
            "",
            f"Machine: {machine()}; GPU: {name}. resnet152, batch {batch}, at most 64 frames per "
            f"clip, {clips} clips of bench_extract's split; pure forward: the faster of two runs "
            "around each end-to-end run, same batch.",
            "",
            "| JPEG decoding | frames | end-to-end (frames/s) | pure forward (frames/s) | ratio "
            "| target |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "    .venv/bin/python benchmarks/bench_distributed.py --gpu-only",
        ]
    )


def _stage_runner_parent() -> str:
    """The commit before `mrw/stage.py` first appeared: the code of before the runner."""
    first = subprocess.run(
        ["git", "-C", str(REPO), "log", "--diff-filter=A", "--format=%H", "--", "mrw/stage.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not first:
        raise SystemExit("mrw/stage.py is not committed: pass --before REV")
    return first[-1] + "^"


def _run(tmp: Path, before: Path, repeat: int) -> dict:
    rel = tmp / "rel"
    rel.mkdir()
    results: dict = {}
    with SampleServer(rel, latency=LATENCY) as srv:
        write_sample_release(rel, "mrw", srv.url, counts={"train": 0, "val": 0, "test": ITEMS})
        variants = [("before", before, "local"), ("local", REPO, "local"), ("ray", REPO, "ray")]
        videos = None
        for stage in ("download", "frames"):
            for r in range(repeat):
                for name, code, distributor in variants if r % 2 == 0 else variants[::-1]:
                    root = tmp / f"{stage}-{name}-{r}"
                    if stage == "download":
                        build_catalog("mrw", "test", root=root, source=str(rel))
                    else:
                        _copy_shards(videos, root, FRAME_SHARDS)
                    got = measure(code, stage, distributor, root)
                    rate = got["count"] / got["seconds"]
                    best = results.setdefault((stage, name), {"rate": 0.0, "startup": []})
                    best["rate"] = max(best["rate"], rate)
                    best["count"] = got["count"]
                    if distributor == "ray":
                        best["startup"].append(got["startup"])
                    if stage == "download" and videos is None and name == "local":
                        videos = root
                    print(f"{stage:9s} {name:6s} run {r}: {rate:8.1f}/s", file=sys.stderr)
    return results


def _copy_shards(src_root: Path, dst_root: Path, count: int) -> None:
    """A root holding the catalog and the first `count` video shards of `src_root`."""
    shutil.copytree(src_root, dst_root)
    videos = dst_root / "mrw" / "videos" / "test"
    for p in sorted(videos.rglob("shard-*.parquet")):
        if int(p.stem.split("-")[1]) >= count:
            p.unlink()


def _format(results: dict, rev: str) -> str:
    def row(stage, unit):
        b, loc, ray = (results[(stage, n)] for n in ("before", "local", "ray"))
        return (
            f"| {stage} | {b['count']} {unit} | {b['rate']:.1f} | {loc['rate']:.1f} | "
            f"{ray['rate']:.1f} | {ray['rate'] / loc['rate']:.2f} | "
            f"{loc['rate'] / b['rate']:.2f} |"
        )

    startups = [s for v in results.values() for s in v["startup"]]
    return "\n".join(
        [
            "## Stage runner: local vs Ray executor, before vs after (bench_distributed.py)",
            "",
            f"Machine: {machine()}; every run in its own process pinned to the same {CPUS} CPUs "
            "when more are visible.",
            f"`download`: {ITEMS} sample clips in shards of {SHARD_SIZE}, {WORKERS} fetch "
            f"threads, {LATENCY * 1000:.0f} ms added before every response body by the server on "
            f"127.0.0.1. `extract-frames`: the first {FRAME_SHARDS} of those video shards, "
            f"{CPUS} videos at once locally, "
            f"one task of 1 CPU per shard on Ray ({CPUS} CPUs). Ray's cluster start-up and one "
            f"warm-up task per worker ({min(startups):.1f}-{max(startups):.1f} s) are outside "
            "the clock. `before`: the code "
            f"at `{rev}` (before the stage runner), same benchmark. Best of the runs: on a "
            "shared machine single runs of one variant vary by up to 2x, so the ratios hold "
            "within that noise.",
            "",
            "| stage | work | before, local (/s) | after, local (/s) | after, Ray (/s) "
            "| Ray / local | local after / before |",
            "|---|---|---|---|---|---|---|",
            row("download", "items"),
            row("frames", "frames"),
            "",
            "    .venv/bin/python benchmarks/bench_distributed.py",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
