"""One item over HTTP: a byte cap, a limit on the whole response, retries, per-host limits, yt-dlp.

Every failure comes back as a short class (`http_404`, `timeout`, `too_large`, `truncated`,
`redirect_loop`, `blocked_redirect`, `bad_encoding`, `not_video`, `connection_error`, `bad_url`,
...) plus a message, never as an exception, because a failed item is data for the status table,
not a reason to stop the run.
"""

from __future__ import annotations

import random
import socket
import tempfile
import threading
import time
import urllib.parse
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import requests
import urllib3

from mrw.network import BlockedAddress, Exchange, GuardedAdapter
from mrw.network import Network as Network  # re-exported: `Fetcher(network=...)` takes one
from mrw.network import is_internal as is_internal

USER_AGENT = "mrw-download/0.1 (+https://github.com/yalesong/pvse)"
#: hosts whose URLs are pages, not media: straight to yt-dlp
PAGE_HOSTS = ("youtube.com", "youtu.be", "vimeo.com", "giphy.com", "twitter.com", "x.com")
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
#: the content codings we decode ourselves, under the byte cap (urllib3 would decode unbounded)
ACCEPT_ENCODING = "gzip, deflate"
#: bytes read from the wire at a time
WIRE_CHUNK = 1 << 20
#: longest Retry-After we honour; a server asking for more gets this
MAX_RETRY_AFTER = 60.0


#: the longest --timeout accepted: a day bounds any one response (a timer cannot take 1e308 s)
MAX_TIMEOUT = 86400.0


def timeout_problem(value: object) -> str | None:
    """Why `value` is not a usable time limit in seconds, or None when it is."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"expected a number of seconds, got {value!r}"
    if not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT:
        return f"expected seconds in (0, {MAX_TIMEOUT:g}], got {value!r}"
    return None


@dataclass(frozen=True)
class FetchConfig:
    """How one item is fetched; plain data passed down from `mrw download`'s options."""

    timeout: float = 30.0  # limit on one whole response (headers and body), seconds
    retries: int = 3  # extra tries on timeouts, connection errors, 5xx and 429
    max_bytes: int = 64 * 1024 * 1024
    per_host: int = 4  # connections open at once to one host (host:port)
    backoff: float = 0.5  # first retry waits about this long, doubling each time
    backoff_max: float = 8.0
    use_ytdlp: bool = True


@dataclass
class FetchResult:
    url: str
    data: bytes | None = None
    error: str | None = None  # the class, e.g. "http_404"; None on success
    message: str = ""
    attempts: int = 0
    content_type: str | None = None
    via: str = "http"  # "http" or "yt-dlp"
    attempt_seconds: list = field(default_factory=list)  # each request's wall time

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def error_text(self) -> str | None:
        return None if self.ok else f"{self.error}: {self.message}"


class FetchFailure(Exception):
    def __init__(
        self, cls: str, message: str, retryable: bool = False, retry_after: float | None = None
    ):
        super().__init__(message)
        self.cls, self.message, self.retryable, self.retry_after = (
            cls,
            message,
            retryable,
            retry_after,
        )


def looks_like_html(head: bytes) -> bool:
    """Sniff the first bytes: an error or landing page, whatever its Content-Type says."""
    h = head[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return h.startswith(
        (
            b"<!doctype html",
            b"<html",
            b"<head",
            b"<body",
            b"<!--",
            b"<?xml",
            b"<meta",
            b"<script",
            b"<title",
            b"<div",
            b"<p>",
        )
    )


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, min(MAX_RETRY_AFTER, float(value)))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(
                0.0, min(MAX_RETRY_AFTER, parsedate_to_datetime(value).timestamp() - time.time())
            )
        except (TypeError, ValueError):
            return None


def _read_timed_out(e: BaseException) -> bool:
    """A read that hit the socket timeout; requests hands it over from `iter_content` as a
    ConnectionError around urllib3's ReadTimeoutError."""
    import urllib3

    timeouts = (requests.exceptions.Timeout, socket.timeout, urllib3.exceptions.ReadTimeoutError)
    return isinstance(e, timeouts) or any(isinstance(a, timeouts) for a in e.args)


def _decoder(encoding: str | None):
    """A zlib decompressor for the response's Content-Encoding, None for identity."""
    enc = (encoding or "").strip().lower()
    if enc in ("", "identity"):
        return None
    if enc in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if enc == "deflate":
        return zlib.decompressobj()
    raise FetchFailure("bad_encoding", f"Content-Encoding {encoding!r} is not one we asked for")


def _read_environment_once() -> tuple[bool, str | bool]:
    """Whether requests must keep reading the environment on every request, and the CA bundle
    to verify with.

    With `trust_env` requests looks up proxies (walking all of `os.environ` twice), the CA bundle
    variables and `~/.netrc` again for every request: about a sixth of the fetch's CPU on a
    fast network. Unless proxies or a netrc file are configured (then requests keeps doing it, since
    `no_proxy` and netrc answer per URL), the one thing it would find, the CA bundle, is read here
    once and the session stops looking: the same requests go out."""
    import os
    import urllib.request

    netrc = [os.environ.get("NETRC"), "~/.netrc", "~/_netrc"]
    if urllib.request.getproxies() or any(
        p and os.path.exists(os.path.expanduser(p)) for p in netrc
    ):
        return True, True
    return False, os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


class Fetcher:
    """Fetches items for many threads: one requests.Session per thread, a semaphore per host."""

    def __init__(self, config: FetchConfig | None = None, network: Network | None = None):
        self.config = config or FetchConfig()
        self.network = network or Network()
        self._local = threading.local()
        self._hosts: dict[str, threading.BoundedSemaphore] = {}
        self._hosts_lock = threading.Lock()
        self._rng = random.Random()
        self._trust_env, self._verify = _read_environment_once()

    # -- plumbing --
    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.headers["User-Agent"] = USER_AGENT
            s.headers["Accept-Encoding"] = ACCEPT_ENCODING
            s.max_redirects = 10
            s.trust_env, s.verify = self._trust_env, self._verify
            adapter = GuardedAdapter(pool_connections=16, pool_maxsize=max(1, self.config.per_host))
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            self._local.session = s
        return s

    def host_slot(self, url: str) -> threading.BoundedSemaphore:
        host = urllib.parse.urlsplit(url).netloc.lower()
        with self._hosts_lock:
            sem = self._hosts.get(host)
            if sem is None:
                sem = self._hosts[host] = threading.BoundedSemaphore(max(1, self.config.per_host))
            return sem

    def _backoff(self, attempt: int) -> float:
        base = min(self.config.backoff_max, self.config.backoff * (2 ** (attempt - 1)))
        return base * (0.5 + self._rng.random())  # jitter, so retries do not arrive together

    # -- the public call --
    def fetch(self, url: str) -> FetchResult:
        result = FetchResult(url=url)
        parts = urllib.parse.urlsplit(url or "")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            result.error, result.message = (
                "bad_url",
                f"only http and https URLs are fetched: {url!r}",
            )
            return result
        page_host = any(
            parts.hostname and (parts.hostname == h or parts.hostname.endswith("." + h))
            for h in PAGE_HOSTS
        )
        for attempt in range(1, self.config.retries + 2):
            result.attempts = attempt
            self._local.import_seconds = 0.0
            slot = self.host_slot(url)
            slot.acquire()  # the wait for a free slot to the host is not the response's time
            held = True  # until a failed attempt lets the slot go before its backoff
            t0 = time.monotonic()
            try:
                if page_host and self.config.use_ytdlp:
                    data, ctype, via = (
                        self._ytdlp(url, t0 + self.config.timeout, generic=False),
                        None,
                        "yt-dlp",
                    )
                else:
                    data, ctype = self._get(url, t0 + self.config.timeout)
                    via = "http"
                    if looks_like_html(data[:512]):
                        data, via = self._page(url, data, t0 + self.config.timeout), "yt-dlp"
                result.attempt_seconds.append(time.monotonic() - t0 - self._local.import_seconds)
                result.data, result.content_type, result.via = data, ctype, via
                result.error, result.message = None, ""
                return result
            except FetchFailure as f:
                slot.release()
                held = False
                result.attempt_seconds.append(time.monotonic() - t0 - self._local.import_seconds)
                result.error, result.message = f.cls, f.message
                if not f.retryable or attempt > self.config.retries:
                    return result
                wait = self._backoff(attempt)
                if f.retry_after is not None:
                    wait = max(wait, f.retry_after)
                time.sleep(wait)
            finally:
                if held:
                    slot.release()
        return result

    def _get(self, url: str, deadline: float) -> tuple[bytes, str | None]:
        """One GET, held in memory under the byte cap."""
        chunks: list[bytes] = []
        ctype = self._stream(url, deadline, self.config.max_bytes, chunks.append)
        return b"".join(chunks), ctype

    def _stream(self, url: str, deadline: float, cap: int, sink) -> str | None:
        """One GET from connect to last byte within `deadline`; the decoded body goes to `sink`
        in pieces, at most `cap` bytes in all. Returns the Content-Type."""
        limit = self.config.timeout
        with Exchange(self.network, deadline) as ex:
            remaining = max(0.001, deadline - time.monotonic())
            try:
                resp = self._session().get(url, stream=True, timeout=(remaining, remaining))
            except BlockedAddress as e:
                raise FetchFailure("blocked_redirect", str(e)) from None
            except requests.exceptions.TooManyRedirects as e:
                raise FetchFailure("redirect_loop", f"too many redirects ({e})") from None
            except requests.exceptions.InvalidURL as e:
                raise FetchFailure("bad_url", str(e)) from None
            except requests.exceptions.RequestException as e:
                if ex.fired.is_set() or isinstance(
                    e, (requests.exceptions.ConnectTimeout, requests.exceptions.ReadTimeout)
                ):
                    raise FetchFailure(
                        "timeout", f"no complete response within {limit:g} s", retryable=True
                    ) from None
                raise FetchFailure("connection_error", _short(e), retryable=True) from None
            try:
                self._read_body(resp, ex, cap, sink)
            finally:
                resp.close()
            return resp.headers.get("Content-Type")

    def _read_body(self, resp, ex: Exchange, cap: int, sink) -> None:
        code = resp.status_code
        if code >= 400:
            raise FetchFailure(
                f"http_{code}",
                f"HTTP {code} {resp.reason or ''}".strip(),
                retryable=code in RETRY_STATUS or code >= 500,
                retry_after=_retry_after(resp.headers.get("Retry-After")),
            )
        decoder = _decoder(resp.headers.get("Content-Encoding"))
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if decoder is None and length is not None and length > cap:
            raise FetchFailure(
                "too_large", f"Content-Length {length} is over the cap of {cap} bytes"
            )
        wire = got = 0  # bytes on the wire (what Content-Length counts) and bytes stored

        def take(data: bytes) -> None:
            nonlocal got
            got += len(data)
            if got > cap:
                raise FetchFailure("too_large", f"more than {cap} bytes")
            sink(data)

        try:
            for raw in resp.raw.stream(WIRE_CHUNK, decode_content=False):
                wire += len(raw)
                if decoder is None:
                    take(raw)
                else:
                    while raw:  # decoded in pieces no larger than what the cap still allows
                        take(decoder.decompress(raw, cap - got + 1))
                        raw = decoder.unconsumed_tail
                if ex.fired.is_set() or time.monotonic() > ex.deadline:
                    break
            if decoder is not None and not ex.fired.is_set():
                take(decoder.flush())
        except zlib.error as e:
            raise FetchFailure(
                "bad_encoding",
                f"the {resp.headers.get('Content-Encoding')} body does not decode ({e})",
            ) from None
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
            if not ex.fired.is_set() and not _read_timed_out(e):
                if "IncompleteRead" in repr(e) or "incomplete" in str(e).lower():
                    raise FetchFailure(
                        "truncated",
                        f"connection closed after {wire} bytes of {length or 'unknown'}",
                        retryable=True,
                    ) from None
                raise FetchFailure("connection_error", _short(e), retryable=True) from None
            ex.fired.set()  # the socket's own read timeout came first: the same deadline
        if ex.fired.is_set() or time.monotonic() > ex.deadline:
            raise FetchFailure(
                "timeout",
                f"response not complete within {self.config.timeout:g} s ({wire} bytes read)",
                retryable=True,
            )
        if length is not None and wire != length:
            raise FetchFailure("truncated", f"got {wire} of {length} bytes", retryable=True)
        if decoder is not None and not decoder.eof:
            raise FetchFailure(
                "truncated",
                f"the {resp.headers.get('Content-Encoding')} stream ends early",
                retryable=True,
            )
        if not got:
            raise FetchFailure("empty", "empty body", retryable=True)

    def fetch_file(self, url: str, path: Path) -> FetchResult:
        """Stream `url` into `path` under the byte cap; `timeout` bounds all tries together.
        On failure `path` is removed."""
        result = FetchResult(url=url)
        deadline = time.monotonic() + self.config.timeout
        path = Path(path)
        try:
            for attempt in range(1, self.config.retries + 2):
                result.attempts = attempt
                t0 = time.monotonic()
                try:
                    with open(path, "wb") as out:
                        result.content_type = self._stream(
                            url, deadline, self.config.max_bytes, out.write
                        )
                    result.error, result.message = None, ""
                    return result
                except FetchFailure as f:
                    result.error, result.message = f.cls, f.message
                    wait = max(self._backoff(attempt), f.retry_after or 0.0)
                    if (
                        not f.retryable
                        or attempt > self.config.retries
                        or time.monotonic() + wait >= deadline
                    ):
                        return result
                    time.sleep(wait)
                finally:
                    result.attempt_seconds.append(time.monotonic() - t0)
            return result
        finally:
            if not result.ok:
                path.unlink(missing_ok=True)

    def _page(self, url: str, html: bytes, deadline: float) -> bytes:
        """A page came back where media was expected: let yt-dlp look for the media in it."""
        if not self.config.use_ytdlp:
            raise FetchFailure("not_video", "an HTML page, not media")
        try:
            return self._ytdlp(url, deadline)
        except FetchFailure as f:
            if f.cls == "timeout":
                raise
            raise FetchFailure(
                "not_video", f"an HTML page with no media in it ({f.message})"
            ) from None

    def _ytdlp(self, url: str, deadline: float, generic: bool = True) -> bytes:
        """yt-dlp as a library (its generic extractor reads <video src=...> pages)."""
        yt_dlp, spent = _load_ytdlp()
        deadline += spent  # importing yt-dlp (seconds, once) is not the server's time
        self._local.import_seconds = getattr(self._local, "import_seconds", 0.0) + spent
        cap = self.config.max_bytes

        class _Quiet:
            def debug(self, msg):
                pass

            info = warning = debug

            def error(self, msg):
                pass

        def hook(d):
            if time.monotonic() > deadline:
                raise FetchFailure(
                    "timeout", f"yt-dlp not done within {self.config.timeout:g} s", retryable=True
                )
            if (d.get("downloaded_bytes") or 0) > cap:
                raise FetchFailure("too_large", f"more than {cap} bytes (yt-dlp)")

        with tempfile.TemporaryDirectory(prefix="mrw-ytdlp-") as tmp:
            opts = {
                "outtmpl": str(Path(tmp) / "media.%(ext)s"),
                "quiet": True,
                "no_warnings": True,
                "noprogress": True,
                "logger": _Quiet(),
                "progress_hooks": [hook],
                "socket_timeout": max(1.0, deadline - time.monotonic()),
                "retries": 0,
                "fragment_retries": 0,
                "noplaylist": True,
                "max_filesize": cap,
                "cachedir": False,
                "http_headers": {"User-Agent": USER_AGENT},
                "overwrites": True,
                # a media URL that answered with a page: only the generic extractor applies, and
                # skipping the match against ~1,800 site extractors saves seconds per call
                "force_generic_extractor": generic,
            }
            try:
                with yt_dlp.YoutubeDL(opts) as ydl:
                    ydl.extract_info(url, download=True)
            except FetchFailure:
                raise
            except Exception as e:  # yt-dlp wraps everything in its own DownloadError
                inner = getattr(e, "exc_info", None)
                if inner and isinstance(inner[1], FetchFailure):
                    raise inner[1] from None
                if time.monotonic() > deadline:
                    raise FetchFailure(
                        "timeout",
                        f"yt-dlp not done within {self.config.timeout:g} s",
                        retryable=True,
                    ) from None
                raise FetchFailure("ytdlp_error", _short(e)) from None
            files = [p for p in Path(tmp).iterdir() if p.is_file() and not p.name.endswith(".part")]
            if not files:
                raise FetchFailure("ytdlp_error", "yt-dlp downloaded nothing")
            path = max(files, key=lambda p: p.stat().st_size)
            if path.stat().st_size > cap:
                raise FetchFailure(
                    "too_large", f"{path.stat().st_size} bytes is over the cap of {cap}"
                )
            return path.read_bytes()


_YTDLP_LOCK = threading.Lock()
_YTDLP_READY = False


def _load_ytdlp():
    """yt_dlp, and the seconds this call spent importing it (0 once imported)."""
    import sys

    global _YTDLP_READY
    if _YTDLP_READY:
        return sys.modules["yt_dlp"], 0.0
    t0 = time.monotonic()
    with _YTDLP_LOCK:
        import yt_dlp

        # the first YoutubeDL loads its networking and the generic extractor: seconds, once
        with yt_dlp.YoutubeDL({"quiet": True, "no_warnings": True}) as ydl:
            ydl.get_info_extractor("Generic")
        # ... and its first page compiles the URL and embed patterns of every site extractor
        # (seconds on a busy machine): pay that here, outside any response's time limit
        from yt_dlp.extractor import gen_extractor_classes

        for ie in gen_extractor_classes():
            try:  # private API of yt-dlp: a change there only costs time
                ie.suitable("http://127.0.0.1/")
                getattr(ie, "real_class", None)  # imports the extractor's module
            except Exception:
                pass
        _YTDLP_READY = True
    return yt_dlp, time.monotonic() - t0


def _short(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
