"""The plain pooled fetch of `bench_download.py`, importable by worker processes.

`DropBytes(config)(url)` fetches one URL with `mrw.fetch.Fetcher` and drops the bytes; in a
`ProcessItemPool` it is the reference that runs as many processes as the download does.
"""

from __future__ import annotations

from mrw.fetch import FetchConfig, Fetcher


class DropBytes:
    def __init__(self, config: FetchConfig):
        self.fetcher = Fetcher(config)

    def __call__(self, url: str) -> str | None:
        return self.fetcher.fetch(url).error_text  # None on success; the bytes are dropped
