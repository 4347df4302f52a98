"""fetch.py against the real local server: every fault, its class, its retries and its time."""

import threading

import pytest
from conftest import forget_requests

from mrw.demo import FAULTS, SERVER_FAULTS, SampleServer, write_sample_release
from mrw.fetch import FetchConfig, Fetcher, looks_like_html

TIMEOUT = 3.0  # generous: the first yt-dlp page of a process costs about a second on a busy machine


@pytest.fixture(scope="module")
def served(fault_server, sample_release, sample_clip):
    forget_requests(fault_server)
    return fault_server, sample_clip, (sample_release / "media" / sample_clip).read_bytes()


def _fetcher(**kw):
    cfg = dict(timeout=TIMEOUT, retries=1, max_bytes=1 << 20, backoff=0.05)
    cfg.update(kw)
    return Fetcher(FetchConfig(**cfg))


EXPECTED = {name: (err, None) for name, err in {**FAULTS, **SERVER_FAULTS}.items()}
# garbage, corrupt and still are media-shaped bytes: fetch hands them on, the probe (or the
# still check of download.py) rejects them
EXPECTED["garbage"] = EXPECTED["corrupt"] = EXPECTED["still"] = (None, None)


@pytest.mark.parametrize("fault", sorted({**FAULTS, **SERVER_FAULTS}))
def test_each_fault_gets_its_class_and_no_request_outlives_the_timeout(served, fault):
    srv, name, body = served
    res = _fetcher().fetch(f"{srv.url}/fault/{fault}/media/{name}")
    expected = EXPECTED[fault][0]
    assert res.error == expected, res.error_text
    assert max(res.attempt_seconds) <= TIMEOUT + 1.0, res.attempt_seconds
    if expected is None and fault not in ("garbage", "corrupt", "still"):
        assert res.data == body
    if fault in ("500-then-ok", "429-then-ok"):
        assert res.attempts == 2
    if fault in (
        "404",
        "too-large",
        "too-large-chunked",
        "redirect-loop",
        "html",
        "endless",
        "s3-denied",
    ):
        assert res.attempts == 1, "no retry on a permanent failure"
    if fault in ("slow", "stall", "truncated", "slow-header"):
        assert res.attempts == 2, "retried once (retries=1)"
    if fault == "embed":
        assert res.via == "yt-dlp"


def test_retry_after_is_honoured(served):
    import time

    srv, name, _ = served
    with SampleServer(srv._server.root) as fresh:  # its 429 counter starts at zero
        t0 = time.monotonic()
        res = _fetcher(backoff=0.01).fetch(f"{fresh.url}/fault/429-then-ok/media/{name}")
        # the server asks for one second; the jittered backoff alone would wait ~0.01 s
        assert res.ok and res.attempts == 2 and time.monotonic() - t0 >= 0.95


def test_only_http_and_https(served):
    for url in ("ftp://127.0.0.1/x.mp4", "file:///etc/passwd", "not a url", ""):
        res = _fetcher().fetch(url)
        assert res.error == "bad_url" and res.attempts == 0


def test_connection_refused_is_retried_then_classified():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    res = _fetcher(retries=2).fetch(f"http://127.0.0.1:{port}/x.mp4")
    assert res.error == "connection_error" and res.attempts == 3


def test_per_host_limit(tmp_path):
    out = write_sample_release(
        tmp_path / "rel", "mrw", "http://unused", counts={"train": 0, "val": 0, "test": 1}
    )
    name = next((out / "media").iterdir()).name
    with SampleServer(out, latency=0.2) as srv:
        fetcher = _fetcher(per_host=2)
        threads = [
            threading.Thread(target=fetcher.fetch, args=(f"{srv.url}/media/{name}",))
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert srv.max_in_flight == 2
        assert srv.requests[f"media/{name}"] == 8


def test_html_sniffing():
    assert looks_like_html(b"\n  <!DOCTYPE html><html>")
    assert looks_like_html(b"<HTML><body>")
    assert not looks_like_html(b"\x00\x00\x00\x18ftypmp42")
    assert not looks_like_html(b"GIF89a")


def test_a_read_timeout_wrapped_as_connection_error_is_a_timeout():
    """requests raises a socket read timeout inside `iter_content` as a ConnectionError; when it
    beats the watchdog to the deadline, the item must still be classed `timeout`."""
    import requests
    import urllib3

    from mrw.fetch import _read_timed_out

    wrapped = requests.exceptions.ConnectionError(
        urllib3.exceptions.ReadTimeoutError(None, "/x", "Read timed out.")
    )
    assert _read_timed_out(wrapped) and _read_timed_out(requests.exceptions.ReadTimeout("slow"))
    assert not _read_timed_out(requests.exceptions.ConnectionError("connection refused"))
    assert not _read_timed_out(ConnectionResetError(104, "reset by peer"))


# -- the environment is read once -----------------------------------------------------------------
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")


def _plain_environment(monkeypatch, tmp_path):
    import os

    for name in list(os.environ):
        if name.lower() in _PROXY_VARS or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc there


def test_without_proxies_or_netrc_the_session_reads_the_environment_once(
    monkeypatch, tmp_path, served
):
    srv, clip, data = served
    _plain_environment(monkeypatch, tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "ca.pem"))
    fetcher = _fetcher()
    session = fetcher._session()
    # what requests would have found per request (the CA bundle) is kept; nothing else to find
    assert session.trust_env is False and session.verify == str(tmp_path / "ca.pem")
    assert fetcher.fetch(f"{srv.url}/media/{clip}").data == data  # plain http: no bundle used


@pytest.mark.parametrize("setting", ["proxy", "netrc"])
def test_with_proxies_or_netrc_requests_keeps_reading_the_environment(
    monkeypatch, tmp_path, setting
):
    _plain_environment(monkeypatch, tmp_path)
    if setting == "proxy":
        monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # never used: nothing is fetched
    else:
        (tmp_path / ".netrc").write_text("machine 127.0.0.1 login a password b\n")
    assert _fetcher()._session().trust_env is True
