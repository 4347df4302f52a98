"""A local HTTP server for a synthetic release (127.0.0.1) that injects faults per URL path
(`/fault/<name>/<path>`), so the demo and the tests meet the failures the real web has."""

from __future__ import annotations

import contextlib
import functools
import gzip
import os
import random
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mrw.demo.release import (
    FAULT_HOLD_SECONDS,
    PRIVATE_REDIRECT_FAULT,
    PRIVATE_REDIRECT_HOST,
    TOO_LARGE_BYTES,
)

# -- the server -------------------------------------------------------------------------------
_CONTENT_TYPES = {
    ".mp4": "video/mp4",
    ".gif": "image/gif",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webm": "video/webm",
    ".json": "application/json",
    ".tsv": "text/tab-separated-values",
    ".txt": "text/plain",
    ".gz": "application/gzip",
    ".html": "text/html",
}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(
        self, format: str, *args: Any
    ) -> None:  # quiet: the tests and the demo read their own output
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    # -- plumbing --
    def _send(
        self,
        code: int,
        body: bytes = b"",
        ctype: str = "text/plain",
        headers: dict[str, str] | None = None,
        head: bool = False,
        length: int | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head and body:
            self._write(body)

    def _write(self, body: bytes) -> None:
        latency = self.server.latency
        if latency:
            time.sleep(latency)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def _file(self, rel: str) -> Path | None:
        root = self.server.root.resolve()
        p = (root / rel).resolve()
        if root not in p.parents or not p.is_file():
            return None
        return p

    def _serve(self, head: bool) -> None:
        self.server.enter()
        try:
            self._route(head)
        finally:
            self.server.leave()

    def _route(self, head: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        self.server.count(path)
        fault = None
        if path.startswith("fault/"):
            parts = path.split("/", 2)
            if len(parts) < 3:
                return self._send(404, b"not found\n", head=head)
            fault, path = parts[1], parts[2]
        f = self._file(path)
        if f is None:
            return self._send(404, b"not found\n", head=head)
        if fault is None:
            return self._send(
                200,
                f.read_bytes(),
                _CONTENT_TYPES.get(f.suffix.lower(), "application/octet-stream"),
                head=head,
            )
        return self._fault(fault, path, f, head)

    def _fault(self, fault: str, rel: str, f: Path, head: bool) -> None:
        ctype = _CONTENT_TYPES.get(f.suffix.lower(), "application/octet-stream")
        key = f"fault/{fault}/{rel}"
        first = self.server.count_of(key) == 1
        stop = self.server.stopping
        if fault == "404":
            return self._send(404, b"<html><body>Not Found</body></html>", "text/html", head=head)
        if fault == "500-then-ok":
            if first:
                return self._send(500, b"internal error\n", head=head)
            return self._send(200, f.read_bytes(), ctype, head=head)
        if fault == "429-then-ok":
            if first:
                return self._send(429, b"slow down\n", headers={"Retry-After": "1"}, head=head)
            return self._send(200, f.read_bytes(), ctype, head=head)
        if fault == "slow":
            body = f.read_bytes()
            self._send(200, b"", ctype, head=True, length=len(body))
            if head:
                return
            t0 = time.monotonic()
            for i in range(len(body)):
                if stop.wait(0.25) or time.monotonic() - t0 > FAULT_HOLD_SECONDS:
                    break
                try:
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                except OSError:
                    return
            self.close_connection = True
            return
        if fault == "slow-header":
            head_bytes = (
                f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {f.stat().st_size}\r\nX-Filler: {'x' * 256}\r\n\r\n"
            ).encode()
            t0 = time.monotonic()
            for i in range(len(head_bytes)):
                if stop.wait(0.25) or time.monotonic() - t0 > FAULT_HOLD_SECONDS:
                    break
                try:
                    self.wfile.write(head_bytes[i : i + 1])
                    self.wfile.flush()
                except OSError:
                    return
            self.close_connection = True
            return
        if fault == "endless":
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if head:
                return
            chunk = bytes(64 * 1024)
            t0 = time.monotonic()
            try:
                while not stop.is_set() and time.monotonic() - t0 < FAULT_HOLD_SECONDS:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            self.close_connection = True
            return
        if fault == "gzip":
            body = gzip.compress(f.read_bytes(), mtime=0)
            return self._send(200, body, ctype, headers={"Content-Encoding": "gzip"}, head=head)
        if fault == PRIVATE_REDIRECT_FAULT:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            host = query.get("to", [PRIVATE_REDIRECT_HOST])[0]
            return self._send(302, b"", headers={"Location": f"http://{host}/{rel}"}, head=head)
        if fault == "stall":
            body = f.read_bytes()
            self._send(200, b"", ctype, head=True, length=len(body))
            stop.wait(FAULT_HOLD_SECONDS)
            self.close_connection = True
            return
        if fault == "truncated":
            body = f.read_bytes()
            self._send(200, b"", ctype, head=True, length=len(body))
            if not head:
                self._write(body[: len(body) // 2])
            self.close_connection = True
            return
        if fault == "html":
            page = b"<!DOCTYPE html><html><head><title>Gone</title></head><body><p>This post was removed.</p></body></html>"
            return self._send(200, page, "text/html; charset=utf-8", head=head)
        if fault == "too-large":
            return self._send(200, _filler(TOO_LARGE_BYTES), ctype, head=head)
        if fault == "too-large-chunked":
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if head:
                return
            chunk = _filler(64 * 1024)
            try:
                for _ in range(TOO_LARGE_BYTES // len(chunk)):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            self.close_connection = True
            return
        if fault == "redirect":
            return self._send(302, b"", headers={"Location": "/" + rel}, head=head)
        if fault == "redirect-loop":
            return self._send(302, b"", headers={"Location": "/" + key}, head=head)
        if fault == "wrong-type":
            return self._send(200, f.read_bytes(), "text/html; charset=utf-8", head=head)
        if fault == "embed":
            tag = "video" if f.suffix.lower() in (".mp4", ".webm", ".gif") else "img"
            page = (
                f"<!DOCTYPE html><html><head><title>{f.stem}</title></head><body>"
                f'<h1>{f.stem}</h1><{tag} controls src="/{rel}"></{tag}></body></html>'
            ).encode()
            return self._send(200, page, "text/html; charset=utf-8", head=head)
        if fault == "garbage":
            return self._send(200, _filler(4096), ctype, head=head)
        if fault == "corrupt":
            return self._send(200, _corrupted(f.read_bytes(), rel), ctype, head=head)
        if fault == "s3-denied":
            return self._send(403, S3_ACCESS_DENIED, "application/xml", head=head)
        if fault == "still":
            return self._send(200, _still_gif(), "image/gif", head=head)
        return self._send(404, b"unknown fault\n", head=head)


#: the body S3 sends for an object that is gone from a bucket that cannot be listed
S3_ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message><RequestId>4442587FB7D0A2F9</RequestId>"
    b"<HostId>mrw-sample</HostId></Error>"
)


@functools.cache
def _still_gif() -> bytes:
    """A one-frame grey GIF, like the placeholder dead GIF hosts serve with 200."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (120, 90), (128, 128, 128)).save(buf, "GIF")
    return buf.getvalue()


def _corrupted(body: bytes, seed: str) -> bytes:
    """The media with its coded frames replaced by noise: the container (an MP4's index
    included) stays intact, so the file still opens as video and fails to decode."""
    data = bytearray(body)
    at = data.find(b"mdat")
    size = int.from_bytes(data[at - 4 : at], "big") if at >= 4 else 0
    lo, hi = at + 4 + 16, min(len(data), at - 4 + size)
    if at < 4 or hi <= lo:  # no MP4 media box: keep the header, noise after it
        lo, hi = min(len(data), 48), len(data)
    data[lo:hi] = random.Random(seed).randbytes(hi - lo)
    return bytes(data)


def _filler(n: int) -> bytes:
    return random.Random(n).randbytes(n)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, root: Path, latency: float) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = Path(root)
        self.latency = latency
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        # clients that hang up (timeouts, byte caps) are part of the tests, not server bugs
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def count(self, path: str) -> None:
        with self._lock:
            self.requests[path] = self.requests.get(path, 0) + 1

    def count_of(self, path: str) -> int:
        with self._lock:
            return self.requests.get(path, 0)


class SampleServer:
    """Serve a folder on 127.0.0.1 (a free port), with faults under `/fault/<name>/<path>`.

    `latency` seconds are added before every response body. Use as a context manager:

        with SampleServer(release_dir) as server:
            server.url  # http://127.0.0.1:PORT
    """

    def __init__(self, root: str | os.PathLike[str], latency: float = 0.0) -> None:
        self._server = _Server(Path(root), latency)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> dict[str, int]:
        """How many requests each path got (a copy)."""
        with self._server._lock:
            return dict(self._server.requests)

    @property
    def max_in_flight(self) -> int:
        """The most requests this server was answering at once."""
        return self._server.max_in_flight

    def start(self) -> SampleServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            daemon=True,
            name="mrw-sample-server",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> SampleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
