"""The demo's command line: write a synthetic release, serve it, or both.

python -m mrw.demo release --dataset mrw --out DIR --base-url http://127.0.0.1:8000
python -m mrw.demo serve DIR --port 0 --port-file DIR/port
python -m mrw.demo demo --dataset mrw --out DIR --port-file DIR/port   # both, until killed
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mrw.demo.release import DEFAULT_COUNTS, write_sample_release
from mrw.demo.server import SampleServer
from mrw.errors import UsageError
from mrw.shards import write_text_atomic


# -- command line -----------------------------------------------------------------------------
def _serve_forever(server: SampleServer, port_file: str | os.PathLike[str] | None) -> None:
    """Announce a started server (its port in `port_file`, written atomically; its URL on
    stdout), then serve until killed."""
    if port_file:
        write_text_atomic(f"{server.port}\n", Path(port_file))
    print(server.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mrw.demo", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("release", help="write a synthetic release")
    r.add_argument("--dataset", default="mrw", choices=sorted(DEFAULT_COUNTS))
    r.add_argument("--out", required=True)
    r.add_argument("--base-url", required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument(
        "--count",
        action="append",
        default=[],
        metavar="SPLIT=N",
        help="items of a split, e.g. --count test=100 (repeatable)",
    )
    r.add_argument("--faults", default="", help="comma-separated fault names for the test split")
    s = sub.add_parser("serve", help="serve a folder on 127.0.0.1 until killed")
    s.add_argument("directory")
    s.add_argument("--port-file", default=None, help="write the port here once listening")
    s.add_argument("--latency", type=float, default=0.0)
    d = sub.add_parser("demo", help="write a release for the server's own URL and serve it")
    d.add_argument("--dataset", default="mrw", choices=sorted(DEFAULT_COUNTS))
    d.add_argument("--out", required=True)
    d.add_argument("--port-file", default=None)
    d.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "release":
            counts: dict[str, int] = {}
            for c in args.count:
                k, _, v = c.partition("=")
                counts[k] = int(v)
            faults = [f for f in args.faults.split(",") if f]
            out = write_sample_release(
                args.out, args.dataset, args.base_url, counts=counts, seed=args.seed, faults=faults
            )
            print(out)
        elif args.cmd == "serve":
            if not Path(args.directory).is_dir():
                raise UsageError(f"no such folder to serve: {args.directory}")
            _serve_forever(
                SampleServer(args.directory, latency=args.latency).start(), args.port_file
            )
        else:
            # the release's URLs need the port, so listen first, then write, then announce
            server = SampleServer(args.out).start()
            Path(args.out).mkdir(parents=True, exist_ok=True)
            write_sample_release(args.out, args.dataset, server.url, seed=args.seed)
            _serve_forever(server, args.port_file)
    except (UsageError, ValueError) as e:
        print(f"mrw.demo: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
