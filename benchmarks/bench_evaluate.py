"""How fast is `mrw evaluate` at MRW scale, next to a plain matrix product and a per-query loop?

Workload (deterministic, seed 0): 5,000 items x K=5 and 5,000 sentences x K=5 embeddings, D=1,024,
float32, written as a real `preds.json` + `.npy` files beside a real MRW-shaped test catalog.

Measured in one run, each in its own subprocess (so peak memory is the process's own):
  1. the evaluator, end to end from `preds.json` (`mrw.evaluate.evaluate_submission`), with its
     peak resident memory;
  2. one float32 product of the same size, 25,000 x 1,024 @ 1,024 x 25,000, numpy (the BLAS the
     evaluator uses on the CPU), into a preallocated output;
  3. a per-query Python loop like the reference code's CPU path (yalesong/pvse `eval.py`:
     `np.tensordot` of the query against every candidate, max over K x K, `argsort`, `where`),
     run on a subset of queries of each direction and scaled by the query count.

Targets: evaluator <= 1.3x the product, >= 15x faster than the loop, peak RSS < 1 GB. The evaluator
gives the float64 protocol's ranks (float32 products, float64 where they decide).
Rewrites only its own section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_evaluate.py [--repeats 2] [--loop-queries 40] [--gpu]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import _results

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "bench_evaluate"
N, K, D = 5000, 5, 1024


def child(code: str, *args) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON line last."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


PREPARE = """
    import json, sys
    import numpy as np
    from mrw.catalog import write_catalog
    root, n, k, d = sys.argv[1], *map(int, sys.argv[2:5])
    write_catalog([{"id": f"mrw{i:05d}", "sentences": [f"MRW sentence {i}"], "url": None,
                    "protocol_sentences": [0]} for i in range(n)], root, "mrw", "test")
    rng = np.random.default_rng(0)
    items = rng.standard_normal((n, k, d), dtype=np.float32)
    sents = (items + 2.0 * rng.standard_normal((n, k, d), dtype=np.float32)).astype(np.float32)
    np.save(f"{root}/items.npy", items)
    np.save(f"{root}/sentences.npy", sents)
    json.dump({"dataset": "mrw", "split": "test", "model": "bench",
               "embeddings": {"items": "items.npy", "sentences": "sentences.npy"}},
              open(f"{root}/preds.json", "w"))
    print(json.dumps({}))
"""

EVALUATE = """
    import json, resource, sys, time
    from mrw.evaluate import evaluate_submission
    root, gpu = sys.argv[1], sys.argv[2] == "1"
    t, c = time.perf_counter(), time.process_time()
    res, _ = evaluate_submission(f"{root}/preds.json", root=root, gpu=gpu)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"wall": wall, "cpu": cpu, "peak_rss": peak, "rsum": res["protocols"]["full"]["rsum"]}))
"""

MATMUL = """
    import json, sys, time
    import numpy as np
    rows, d = int(sys.argv[1]), int(sys.argv[2])
    rng = np.random.default_rng(1)
    a = rng.standard_normal((rows, d), dtype=np.float32)
    b = rng.standard_normal((rows, d), dtype=np.float32)
    out = np.empty((rows, rows), dtype=np.float32)
    out.fill(0)  # touch the pages before timing
    t, c = time.perf_counter(), time.process_time()
    np.matmul(a, b.T, out=out)
    print(json.dumps({"wall": time.perf_counter() - t, "cpu": time.process_time() - c}))
"""

LOOP = """
    # A per-query loop in the style of the reference CPU path (not its code): score one query
    # against every candidate with tensordot, max over K x K, sort, find the right answer.
    import json, sys, time
    import numpy as np
    root, q = sys.argv[1], int(sys.argv[2])
    items, sents = np.load(f"{root}/items.npy"), np.load(f"{root}/sentences.npy")
    n = len(items)
    picks = np.linspace(0, n - 1, q).astype(int)
    t = time.perf_counter()
    i2t = []
    for i in picks:
        sim = np.tensordot(items[i][None], sents, axes=[2, 2]).max(axis=(0, 1, 3)).flatten()
        order = np.argsort(sim)[::-1]
        i2t.append(int(np.where(order == i)[0][0]))
    t_i2t = time.perf_counter() - t
    t = time.perf_counter()
    t2i = []
    for j in picks:
        sim = np.tensordot(sents[j][None], items, axes=[2, 2]).max(axis=(1, 3))[0]
        order = np.argsort(sim)[::-1]
        t2i.append(int(np.where(order == j)[0][0]))
    t_t2i = time.perf_counter() - t
    print(json.dumps({"i2t": t_i2t, "t2i": t_t2i, "queries": q, "scaled": (t_i2t + t_t2i) * n / q}))
"""


def machine() -> str:
    model = _results.cpu_name()
    import numpy as np

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores visible, numpy {np.__version__}"


def write_section(body: str) -> None:
    _results.write_section(SECTION, body)


def gpu_only(repeats: int) -> None:
    """`mrw evaluate --gpu` end to end against the CPU evaluator on the same machine."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("--gpu-only given but CUDA is not available")
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as root:
        child(PREPARE, root, N, K, D)
        runs = {"cpu": [], "gpu": []}
        for r in range(repeats):
            for key in runs:
                runs[key].append(child(EVALUATE, root, int(key == "gpu")))
            print(
                f"run {r + 1}: CPU {runs['cpu'][-1]['wall']:.2f} s, --gpu {runs['gpu'][-1]['wall']:.2f} s",
                flush=True,
            )
    best = {key: min(v, key=lambda x: x["wall"]) for key, v in runs.items()}
    same = all(x["rsum"] == best["cpu"]["rsum"] for v in runs.values() for x in v)
    body = "\n".join(
        [
            "## Evaluation at MRW scale on a GPU (`benchmarks/bench_evaluate.py --gpu-only`)",
            "",
            f"Machine: {machine()}; GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}",
            "",
            f"Workload: as in the CPU section, {N:,} items x K={K} and {N:,} sentences x K={K}, D={D:,}; "
            f"each evaluation in its own process, end to end from `preds.json` (the CUDA start-up "
            f"included); fastest of {repeats}.",
            "",
            "| what | wall (s) | speed vs the CPU evaluator on this machine |",
            "|---|---:|---:|",
            f"| evaluator on this machine's CPUs | {best['cpu']['wall']:.2f} | 1.00x |",
            f"| evaluator with `--gpu` | {best['gpu']['wall']:.2f} | "
            f"{best['cpu']['wall'] / best['gpu']['wall']:.2f}x |",
            "",
            f"Same rsum on both devices in every run: {'yes' if same else '**no**'} "
            f"({best['cpu']['rsum']:.4f}).",
        ]
    )
    print(body)
    _results.write_section(SECTION + "_gpu", body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--loop-queries",
        type=int,
        default=40,
        help="queries per direction timed for the per-query loop (scaled to 5,000)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="evaluator and matmul runs, interleaved; the fastest of each is reported",
    )
    ap.add_argument("--gpu", action="store_true", help="also time the evaluator with --gpu")
    ap.add_argument(
        "--gpu-only",
        action="store_true",
        help="the evaluator with --gpu against itself on this machine's CPUs, into its "
        "own section, bench_evaluate_gpu",
    )
    args = ap.parse_args()
    if args.gpu_only:
        return gpu_only(args.repeats)
    load = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as root:
        print(f"preparing {N} items x K={K}, {N} sentences x K={K}, D={D} float32 ...", flush=True)
        child(PREPARE, root, N, K, D)
        runs = {"ev": [], "mm": []}
        for r in range(args.repeats):  # interleaved, so a burst of load hits both alike
            runs["ev"].append(child(EVALUATE, root, 0))
            runs["mm"].append(child(MATMUL, N * K, D))
            print(
                f"run {r + 1}: evaluator {runs['ev'][-1]['wall']:.2f} s (cpu {runs['ev'][-1]['cpu']:.1f} s, "
                f"peak RSS {runs['ev'][-1]['peak_rss'] / 2**30:.2f} GiB); one float32 matmul "
                f"{N * K}x{D} @ {D}x{N * K}: {runs['mm'][-1]['wall']:.2f} s (cpu {runs['mm'][-1]['cpu']:.1f} s)",
                flush=True,
            )
        ev = min(runs["ev"], key=lambda x: x["wall"])
        ev["peak_rss"] = max(x["peak_rss"] for x in runs["ev"])
        mm = min(runs["mm"], key=lambda x: x["wall"])
        gpu = child(EVALUATE, root, 1) if args.gpu else None
        if gpu:
            print(f"evaluator (--gpu, end to end): {gpu['wall']:.2f} s", flush=True)
        loop = child(LOOP, root, args.loop_queries)
        print(
            f"per-query loop: {loop['queries']} + {loop['queries']} queries in "
            f"{loop['i2t'] + loop['t2i']:.2f} s, scaled to {N} + {N}: {loop['scaled']:.1f} s",
            flush=True,
        )

    vs_mm, vs_loop = ev["wall"] / mm["wall"], loop["scaled"] / ev["wall"]
    gib = ev["peak_rss"] / 2**30
    # CPU time: the least of each, as for wall time (a loaded machine inflates both)
    ev_cpu = min(x["cpu"] for x in runs["ev"])
    mm_cpu = min(x["cpu"] for x in runs["mm"])
    cpu_mm = ev_cpu / mm_cpu
    print(
        f"evaluator / matmul = {vs_mm:.2f}x wall, {cpu_mm:.2f}x cpu (target <= 1.3x); loop / evaluator = "
        f"{vs_loop:.1f}x (target >= 15x); peak RSS {gib:.2f} GiB (target < 1 GiB)"
    )
    rows = [
        f"| evaluator, end to end from `preds.json` (CPU) | {ev['wall']:.2f} | {ev_cpu:.1f} | "
        f"{vs_mm:.2f}x | {gib:.2f} |",
        f"| one float32 matmul {N * K:,} x {D:,} @ {D:,} x {N * K:,} (numpy BLAS) | {mm['wall']:.2f} | "
        f"{mm_cpu:.1f} | 1.00x | |",
        f"| per-query Python loop like the reference, {loop['queries']} + {loop['queries']} queries "
        f"scaled to {N:,} + {N:,} | {loop['scaled']:.1f} | | {loop['scaled'] / mm['wall']:.1f}x | |",
    ]
    if gpu:
        rows.insert(
            1,
            f"| evaluator, end to end (`--gpu`) | {gpu['wall']:.2f} | | {gpu['wall'] / mm['wall']:.2f}x | |",
        )
    body = "\n".join(
        [
            "## Evaluation at MRW scale (`benchmarks/bench_evaluate.py`)",
            "",
            f"Machine: {machine()}",
            "",
            f"Workload: {N:,} items x K={K} and {N:,} sentences x K={K}, D={D:,}, float32 embeddings "
            "(seed 0), evaluated both directions; every step in its own process.",
            "",
            f"Evaluator and matmul: fastest of {args.repeats} interleaved runs (wall and CPU time each the "
            "least of its runs); cpu = process CPU time, all threads. The evaluator gives the float64 "
            "protocol's ranks (float32 products, float64 re-check near each threshold).",
            "",
            "| what | wall (s) | cpu (s) | wall vs the matmul | peak RSS (GiB) |",
            "|---|---:|---:|---:|---:|",
            *rows,
            "",
            f"Evaluator / matmul: **{vs_mm:.2f}x** wall, {cpu_mm:.2f}x CPU time (target <= 1.3x). "
            f"Loop / evaluator: **{vs_loop:.1f}x** (target >= 15x). Evaluator peak RSS: **{gib:.2f} GiB** "
            "(target < 1 GiB). Load average at the start: "
            + ", ".join(f"{x:.1f}" for x in load)
            + " (wall times on a loaded machine are noisy; CPU time much less so).",
        ]
    )
    write_section(body)
    print(f"wrote the bench_evaluate section of {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
