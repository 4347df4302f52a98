"""Hostile servers, archive bombs, bad input and broken files: bounded, one line, nothing left.

Every server here is a real one on 127.0.0.1 whose slow and endless modes stop by themselves. The
redirect tests route "public" names to it through an injected `Network`, and a guard on
`socket.socket.connect` refuses (and records) any connection outside loopback, so no packet
leaves the machine even when the policy under test is broken.
"""

import errno
import io
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner
from conftest import served_root

from mrw import paths, shards
from mrw.catalog import write_catalog
from mrw.cli import main
from mrw.demo import SampleServer, write_sample_release
from mrw.errors import FatalError, UsageError
from mrw.fetch import FetchConfig, Fetcher, Network, is_internal
from mrw.releases import build_catalog
from mrw.releases.release import cache_key, cached_release, extract_archive, open_release

REPO = Path(__file__).resolve().parent.parent


# -- helpers --------------------------------------------------------------------------------------
def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(res, code: int, *needles: str) -> str:
    """The command failed with `code` and exactly one `mrw: error:` line holding `needles`."""
    err = res.stderr
    assert res.exit_code == code, (res.exit_code, res.output, err)
    assert "Traceback" not in err
    lines = [ln for ln in re.split(r"[\r\n]", err) if ln.startswith("mrw: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def write_mrw_release(folder: Path, records=None, split_bytes: bytes | None = None) -> Path:
    records = records or [
        {"id": "a1", "sentence": "MRW it works", "url": "https://media.example.org/a1.mp4"},
        {"id": "b2", "sentence": "MFW it still works", "url": "https://media.example.org/b2.mp4"},
    ]
    (folder / "split").mkdir(parents=True, exist_ok=True)
    meta = records if isinstance(records, str) else json.dumps(records)
    (folder / "mrw-v1.0.json").write_text(meta)
    for name in ("train", "valid"):
        (folder / "split" / f"{name}.tsv").write_text("a1\n")
    (folder / "split" / "test.tsv").write_bytes(split_bytes or b"a1\nb2\n")
    return folder


def make_tar(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        for p in sorted(folder.iterdir()):
            tar.add(p, arcname=p.name)
    return out


@pytest.fixture
def no_proxy(monkeypatch):
    for name in (
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch, no_proxy):
    """Refuse and record every connect outside loopback, in this process, while the test runs."""
    refused: list = []
    real = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and not ipaddress.ip_address(host.split("%")[0]).is_loopback:
            refused.append(address)
            raise OSError(errno.ENETUNREACH, f"test guard: no connection to {host}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    return refused


class Lab(Network):
    """A tiny internet: names map to addresses, and the one public address routes to the server."""

    PUBLIC = "93.184.216.34"

    def __init__(self, port: int, names: dict):
        self.port, self.names = port, names
        self.connects: list = []

    def resolve(self, host, port):
        ip = self.names.get(host, host)
        ipaddress.ip_address(ip)  # only names the lab knows
        return [(socket.AF_INET, (ip, port))]

    def connect(self, sock, address):
        self.connects.append(address)
        if address == (self.PUBLIC, self.port) or address[0].startswith("127."):
            return sock.connect(("127.0.0.1", self.port))
        return sock.connect(address)  # the guard refuses it, and records it


@pytest.fixture(scope="module")
def media(fault_server, sample_release, sample_clip, tmp_path_factory):
    """The session's server and release, one of its clips, and under `hostile/` a release
    tarball and a big sparse file of zeros."""
    own = served_root(fault_server) / "hostile"
    own.mkdir(exist_ok=True)
    make_tar(
        write_mrw_release(tmp_path_factory.mktemp("hostile") / "good"), own / "mrw-v1.0.tar.gz"
    )
    with open(own / "zeros.bin", "wb") as fh:
        fh.truncate(48 << 20)
    return fault_server, sample_release, sample_clip


def _fetcher(network=None, **kw):
    cfg = dict(timeout=1.0, retries=0, max_bytes=1 << 20, backoff=0.01)
    cfg.update(kw)
    return Fetcher(FetchConfig(**cfg), network)


# -- 1. --timeout bounds the whole exchange, headers included -------------------------------------
def test_slow_headers_are_cut_at_the_timeout(media):
    srv, _, name = media
    t0 = time.monotonic()
    res = _fetcher(timeout=1.0).fetch(f"{srv.url}/fault/slow-header/media/{name}")
    assert res.error == "timeout", res.error_text
    assert time.monotonic() - t0 < 2.5


class SlowDNS(Network):
    """A resolver that answers after `delay` seconds (a silent DNS server), with loopback."""

    def __init__(self, delay: float):
        self.delay = delay
        self.calls = 0

    def resolve(self, host, port):
        self.calls += 1
        time.sleep(self.delay)
        return [(socket.AF_INET, ("127.0.0.1", port))]


def test_a_slow_name_lookup_is_cut_at_the_timeout(media, loopback_only):
    srv, _, clip = media
    port = srv.url.rsplit(":", 1)[1]
    network = SlowDNS(delay=4.0)
    t0 = time.monotonic()
    res = _fetcher(network, timeout=1.0).fetch(f"http://slow-dns.example:{port}/media/{clip}")
    elapsed = time.monotonic() - t0
    assert res.error == "timeout" and network.calls == 1, (res.error, res.message)
    assert elapsed < 2.5, f"the lookup held the fetch for {elapsed:.1f} s past its 1 s limit"
    # a quick lookup is not affected: the same server by name, resolved at once
    quick = _fetcher(SlowDNS(delay=0.0), timeout=5.0)
    assert quick.fetch(f"http://quick-dns.example:{port}/media/{clip}").ok
    assert not loopback_only


def test_download_with_slow_headers_ends_within_its_timeout(media, tmp_path):
    srv, _out, name = media
    rel = tmp_path / "rel"
    records = [
        {"id": "s1", "sentence": "MRW slow", "url": f"{srv.url}/fault/slow-header/media/{name}"}
    ]
    write_mrw_release(rel, records, split_bytes=b"s1\n")
    root = tmp_path / "root"
    t0 = time.monotonic()
    res = run(
        "download",
        "--root",
        root,
        "--split",
        "test",
        "--metadata",
        rel,
        "--timeout",
        "1",
        "--retries",
        "0",
    )
    assert res.exit_code == 0, res.output
    status = shards.read_status(paths.videos_dir(root, "mrw", "test")).to_pylist()
    assert status[0]["error"].startswith("timeout")
    assert time.monotonic() - t0 < 15


# -- 2. the release download: a byte cap and one deadline ------------------------------------------
def test_endless_release_is_cut_at_the_cap_and_nothing_is_kept(media, tmp_path):
    srv, _, _ = media
    root = tmp_path / "root"
    url = f"{srv.url}/fault/endless/hostile/mrw-v1.0.tar.gz"
    t0 = time.monotonic()
    res = run(
        "download",
        "--root",
        root,
        "--split",
        "test",
        "--metadata",
        url,
        "--catalog-only",
        "--metadata-max-bytes",
        2_000_000,
    )
    one_line_error(res, 2, "too_large", "--metadata-max-bytes")
    assert time.monotonic() - t0 < 10
    cache = paths.release_cache_dir(root, "mrw")
    assert not [p for p in cache.rglob("*") if p.is_file()], list(cache.rglob("*"))
    assert not paths.catalog_path(root, "mrw", "test").exists()


def test_trickling_release_is_cut_at_the_deadline(media, tmp_path):
    srv, _, _ = media
    root = tmp_path / "root"
    t0 = time.monotonic()
    res = run(
        "download",
        "--root",
        root,
        "--split",
        "test",
        "--catalog-only",
        "--metadata",
        f"{srv.url}/fault/slow/hostile/mrw-v1.0.tar.gz",
        "--metadata-timeout",
        "1.5",
    )
    one_line_error(res, 1, "timeout", "--metadata-timeout")
    assert time.monotonic() - t0 < 6, "the deadline covers every try together"
    assert not [p for p in paths.release_cache_dir(root, "mrw").rglob("*") if p.is_file()]


def test_release_default_cap_is_a_multiple_of_the_descriptor_size():
    from mrw.releases.release import RELEASE_MAX_BYTES, RELEASE_SIZE_FACTOR, release_max_bytes

    assert release_max_bytes({"release": {"size_bytes": 1000}}) == 1000 * RELEASE_SIZE_FACTOR
    assert release_max_bytes({"release": {}}) == RELEASE_MAX_BYTES


# -- 3. gzip on the wire: what the server meant, lengths compared on the wire --------------------------
def test_gzip_body_is_decoded_and_its_wire_length_checked(media):
    srv, out, name = media
    res = _fetcher(timeout=5.0).fetch(f"{srv.url}/fault/gzip/media/{name}")
    assert res.ok, res.error_text
    assert res.data == (out / "media" / name).read_bytes()


def test_gzip_bomb_stops_at_the_byte_cap_without_decoding_it_all(media):
    srv, _, _ = media
    res = _fetcher(timeout=10.0, max_bytes=1 << 20).fetch(f"{srv.url}/fault/gzip/hostile/zeros.bin")
    assert res.error == "too_large", res.error_text


# -- 4. no redirect to an internal address from a public URL, decided before connecting ---------
def test_is_internal_covers_the_dangerous_ranges():
    for ip in (
        "10.0.0.1",
        "172.16.3.4",
        "192.168.1.1",
        "127.0.0.1",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "fd00::1",
        "100.64.0.1",
        "0.0.0.0",
        "::ffff:10.0.0.1",
    ):
        assert is_internal(ip), ip
    for ip in ("93.184.216.34", "8.8.8.8", "2606:4700::1111"):
        assert not is_internal(ip), ip


@pytest.mark.parametrize(
    "target,resolved",
    [("lan.test", "10.0.0.1"), ("169.254.169.254", "169.254.169.254"), ("me.test", "127.0.0.1")],
)
def test_redirect_from_a_public_url_to_an_internal_address_is_blocked(
    media, loopback_only, target, resolved
):
    srv, _, name = media
    lab = Lab(
        srv.port, {"cdn.example.com": Lab.PUBLIC, "lan.test": "10.0.0.1", "me.test": "127.0.0.1"}
    )
    url = f"http://cdn.example.com:{srv.port}/fault/redirect-private/media/{name}?to={target}:{srv.port}"
    res = _fetcher(lab, timeout=3.0).fetch(url)
    assert res.error == "blocked_redirect", res.error_text
    assert resolved in res.message
    assert lab.connects == [(Lab.PUBLIC, srv.port)], "only the public host was connected to"
    assert loopback_only == [], "a socket went outside loopback"


def test_redirect_between_public_hosts_and_from_an_internal_url_are_followed(media, loopback_only):
    srv, out, name = media
    body = (out / "media" / name).read_bytes()
    lab = Lab(srv.port, {"cdn.example.com": Lab.PUBLIC, "lan.test": "127.0.0.2"})
    res = _fetcher(lab, timeout=3.0).fetch(
        f"http://cdn.example.com:{srv.port}/fault/redirect/media/{name}"
    )
    assert res.ok and res.data == body, res.error_text
    # a URL on the user's own network may redirect within it
    res = _fetcher(lab, timeout=3.0).fetch(
        f"{srv.url}/fault/redirect-private/media/{name}?to=lan.test:{srv.port}"
    )
    assert res.ok and res.data == body, res.error_text
    assert ("127.0.0.2", srv.port) in lab.connects
    assert loopback_only == []


def test_kept_alive_connection_to_an_internal_host_is_not_reused_by_a_public_url(
    media, loopback_only
):
    srv, _out, name = media
    lab = Lab(srv.port, {"cdn.example.com": Lab.PUBLIC, "lan.test": "127.0.0.1"})
    fetcher = _fetcher(lab, timeout=3.0)
    assert fetcher.fetch(f"http://lan.test:{srv.port}/media/{name}").ok  # pooled, keep-alive
    res = fetcher.fetch(
        f"http://cdn.example.com:{srv.port}/fault/redirect-private/media/{name}?to=lan.test:{srv.port}"
    )
    assert res.error == "blocked_redirect", res.error_text
    assert loopback_only == []


def test_release_redirected_to_an_internal_address_is_refused(media, loopback_only, tmp_path):
    srv, _, _ = media
    lab = Lab(srv.port, {"releases.example.com": Lab.PUBLIC})
    url = f"http://releases.example.com:{srv.port}/fault/redirect-private/hostile/mrw-v1.0.tar.gz"
    with pytest.raises(UsageError, match="blocked_redirect"):
        cached_release(url, tmp_path / "cache", "mrw-v1.0.json", network=lab)
    assert loopback_only == []
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


# -- 5. archive bombs ---------------------------------------------------------------------------------
class _Zeros(io.RawIOBase):
    def __init__(self, n):
        self.left = n

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def _tar_bomb(path: Path, size: int) -> Path:
    """A tar.gz with the metadata file and one member of `size` zeros, streamed (small on disk)."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        meta = json.dumps([{"id": "a1", "sentence": "x", "url": "http://e.org/a.mp4"}]).encode()
        info = tarfile.TarInfo("mrw-v1.0.json")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
        info = tarfile.TarInfo("split/zeros.tsv")
        info.size = size
        tar.addfile(info, io.BufferedReader(_Zeros(size), 1 << 20))
    return path


def _zip_bomb(path: Path, size: int) -> Path:
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf,
        zf.open("dataset_coco.json", "w") as fh,
    ):
        block = bytes(1 << 20)
        for _ in range(size >> 20):
            fh.write(block)
    return path


def test_tar_bomb_is_capped_and_cleaned_up(tmp_path, monkeypatch):
    bomb = _tar_bomb(tmp_path / "mrw-v1.0.tar.gz", 96 << 20)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(UsageError, match="unpacks to more than"):
        extract_archive(bomb, tmp_path / "out", max_bytes=8 << 20)
    assert not (tmp_path / "out").exists()
    # the command at its default caps, with its temporary folder under our control
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    res = run(
        "download",
        "--root",
        tmp_path / "root",
        "--split",
        "test",
        "--catalog-only",
        "--metadata",
        bomb,
    )
    one_line_error(res, 2, "unpacks to more than", str(bomb))
    assert list(scratch.iterdir()) == []


def test_zip_bomb_is_capped_and_cleaned_up(tmp_path):
    bomb = _zip_bomb(tmp_path / "caption_datasets.zip", 64 << 20)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(UsageError, match="unpacks to more than"):
        extract_archive(bomb, tmp_path / "out", max_bytes=4 << 20)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archive_with_too_many_members_is_refused(tmp_path, kind):
    path = tmp_path / f"many.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for i in range(60):
                zf.writestr(f"f{i}", b"")
    else:
        with tarfile.open(path, "w:gz") as tar:
            for i in range(60):
                tar.addfile(tarfile.TarInfo(f"f{i}"), io.BytesIO(b""))
    with pytest.raises(UsageError, match="more than 50 members"):
        extract_archive(path, tmp_path / "out", max_members=50)
    assert not (tmp_path / "out").exists()


# -- 6. the release cache: keyed by URL, verified, never keeps a bad download ----------------------
def test_html_page_is_not_cached_and_the_url_is_fetched_again_once_good(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "mrw-v1.0.tar.gz").write_bytes(b"<!DOCTYPE html><html><body>maintenance</body></html>")
    root = tmp_path / "root"
    with SampleServer(www) as srv:
        url = f"{srv.url}/mrw-v1.0.tar.gz"
        res = run(
            "download", "--root", root, "--split", "test", "--catalog-only", "--metadata", url
        )
        one_line_error(res, 2, "HTML page")
        assert not [p for p in paths.release_cache_dir(root, "mrw").rglob("*") if p.is_file()]
        make_tar(write_mrw_release(tmp_path / "good"), www / "mrw-v1.0.tar.gz")
        res = run(
            "download", "--root", root, "--split", "test", "--catalog-only", "--metadata", url
        )
        assert res.exit_code == 0, res.output
        assert srv.requests["mrw-v1.0.tar.gz"] == 2


def test_two_urls_with_the_same_file_name_get_their_own_releases(tmp_path):
    www = tmp_path / "www"
    for sub, sentence in (("a", "MRW first"), ("b", "MRW second")):
        rel = write_mrw_release(
            tmp_path / f"rel-{sub}",
            [{"id": "a1", "sentence": sentence, "url": "https://e.org/a1.mp4"}],
            split_bytes=b"a1\n",
        )
        (www / sub).mkdir(parents=True)
        make_tar(rel, www / sub / "mrw-v1.0.tar.gz")
    root = tmp_path / "root"
    with SampleServer(www) as srv:
        got = []
        for sub in ("a", "b"):
            url = f"{srv.url}/{sub}/mrw-v1.0.tar.gz"
            build_catalog("mrw", "test", root=root, source=url)
            got.append(
                pa.parquet.read_table(paths.catalog_path(root, "mrw", "test"))["sentences"][
                    0
                ].as_py()
            )
        assert got == [["MRW first"], ["MRW second"]]
        assert cache_key(f"{srv.url}/a/mrw-v1.0.tar.gz") != cache_key(
            f"{srv.url}/b/mrw-v1.0.tar.gz"
        )


def test_release_without_its_metadata_file_or_with_a_bad_checksum_is_not_kept(media, tmp_path):
    srv, out, _ = media
    empty = tmp_path / "empty"
    (empty / "other").mkdir(parents=True)
    (empty / "other" / "readme.txt").write_text("nothing here\n")
    www = tmp_path / "www"
    www.mkdir()
    make_tar(empty, www / "mrw-v1.0.tar.gz")
    cache = tmp_path / "cache"
    with SampleServer(www) as other, pytest.raises(UsageError, match="metadata file"):
        cached_release(f"{other.url}/mrw-v1.0.tar.gz", cache, "mrw-v1.0.json")
    with pytest.raises(UsageError, match="sha256"):
        cached_release(
            f"{srv.url}/hostile/mrw-v1.0.tar.gz", cache, "mrw-v1.0.json", sha256="0" * 64
        )
    with pytest.raises(FatalError, match="truncated"):
        cached_release(f"{srv.url}/fault/truncated/hostile/mrw-v1.0.tar.gz", cache, "mrw-v1.0.json")
    assert not [p for p in cache.rglob("*") if p.is_file()], list(cache.rglob("*"))
    import hashlib

    good = hashlib.sha256((out / "hostile" / "mrw-v1.0.tar.gz").read_bytes()).hexdigest()
    folder = cached_release(
        f"{srv.url}/hostile/mrw-v1.0.tar.gz", cache, "mrw-v1.0.json", sha256=good
    )
    assert (folder / "mrw-v1.0.json").is_file()


def test_official_release_checksum_comes_from_the_descriptor(media, tmp_path, monkeypatch):
    srv, _, _ = media
    from mrw import descriptors

    desc = json.loads(json.dumps(descriptors.load_descriptor("mrw")))
    desc["release"]["url"] = f"{srv.url}/hostile/mrw-v1.0.tar.gz"
    desc["release"]["sha256"] = "f" * 64
    monkeypatch.setattr("mrw.descriptors.load_descriptor", lambda name: desc)
    with (
        pytest.raises(UsageError, match="not the official release"),
        open_release("mrw", None, tmp_path / "root"),
    ):
        pass


# -- 9. bad input: one line, exit 2, nothing written -------------------------------------------------
@pytest.mark.parametrize(
    "case",
    [
        "not-utf8-split",
        "deep-json",
        "huge-int",
        "lone-surrogate-sentence",
        "lone-surrogate-id",
        "bom-json",
    ],
)
def test_bad_release_input_is_one_line_and_exit_2(tmp_path, case):
    rel = tmp_path / "rel"
    if case == "not-utf8-split":
        write_mrw_release(rel, split_bytes=b"a1\n\xff\xfeb2\n")
        needle = "test.tsv:2: not UTF-8"
    elif case == "deep-json":
        write_mrw_release(rel, "[" * 100_000 + "]" * 100_000)
        needle = "nested too deeply"
    elif case == "huge-int":
        write_mrw_release(
            rel, '[{"id": ' + "7" * 5000 + ', "sentence": "x", "url": "http://e.org/x"}]'
        )
        needle = "not valid JSON"
    elif case == "lone-surrogate-sentence":
        write_mrw_release(rel, '[{"id": "a1", "sentence": "MRW \\ud800", "url": "http://e.org/x"}]')
        needle = "lone surrogate"
    elif case == "lone-surrogate-id":
        write_mrw_release(rel, '[{"id": "a\\udc00", "sentence": "MRW x", "url": "http://e.org/x"}]')
        needle = "lone surrogate"
    else:  # a BOM before JSON is fine; this one hides a bad value behind it
        write_mrw_release(rel)
        (rel / "mrw-v1.0.json").write_bytes(b"\xef\xbb\xbf[1, ")
        needle = "not valid JSON"
    root = tmp_path / "root"
    res = run("download", "--root", root, "--split", "test", "--catalog-only", "--metadata", rel)
    one_line_error(res, 2, needle)
    assert not paths.catalog_path(root, "mrw", "test").exists()


def test_bom_at_the_start_of_a_split_list_and_of_the_json_keeps_the_first_id(tmp_path):
    rel = write_mrw_release(tmp_path / "rel", split_bytes=b"\xef\xbb\xbfa1\nb2\n")
    meta = rel / "mrw-v1.0.json"
    meta.write_bytes(b"\xef\xbb\xbf" + meta.read_bytes())
    path, report = build_catalog("mrw", "test", root=tmp_path / "root", source=str(rel))
    assert pa.parquet.read_table(path)["id"].to_pylist() == ["a1", "b2"] and not report.missing


@pytest.mark.parametrize("value", ["inf", "1e308", "0", "-1", "nan", "-inf"])
@pytest.mark.parametrize("option", ["--timeout", "--metadata-timeout"])
def test_meaningless_timeouts_are_refused_before_anything_is_written(tmp_path, option, value):
    rel = write_mrw_release(tmp_path / "rel")
    root = tmp_path / "root"
    res = run("download", "--root", root, "--split", "test", "--metadata", rel, option, value)
    one_line_error(res, 2, option)
    assert not root.exists() or not any(root.rglob("*")), list(root.rglob("*"))


# -- 10. truncated or garbled files the pipeline wrote ------------------------------------------------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _catalog(root: Path, ids=("a1", "b2")) -> Path:
    rows = [
        {
            "id": i,
            "sentences": [f"MRW {i}"],
            "url": f"http://e.org/{i}.mp4",
            "protocol_sentences": [0],
        }
        for i in ids
    ]
    return write_catalog(rows, root, "mrw", "test")


def _video_stage(root: Path) -> Path:
    from mrw.download import VIDEO_SCHEMA

    stage = paths.videos_dir(root, "mrw", "test")
    shards.check_manifest(
        stage,
        {
            "stage": "videos",
            "dataset": "mrw",
            "split": "test",
            "shard_size": 1000,
            "max_bytes": 1 << 20,
        },
    )
    rows = [
        {
            "id": "a1",
            "video": b"\x00" * 5000,
            "format": "mp4",
            "sha256": "0",
            "num_frames": 1,
            "fps": 1.0,
            "width": 64,
            "height": 64,
            "duration": 1.0,
        }
    ]
    status = [
        {"id": "a1", "url": "u", "status": "ok", "error": None, "attempts": 1},
        {"id": "b2", "url": "u", "status": "failed", "error": "http_404: x", "attempts": 1},
    ]
    shards.write_shard(stage, 0, pa.Table.from_pylist(rows, schema=VIDEO_SCHEMA), status)
    return stage


@pytest.mark.parametrize("command", ["validate", "build-vocab", "info", "download"])
def test_truncated_catalog_is_one_line_naming_it(root, command):
    cat = _catalog(root)
    _truncate(cat)
    args = {
        "validate": ["validate", "--root", root, "--split", "test"],
        "build-vocab": ["build-vocab", "--root", root, "--split", "test"],
        "info": ["info", "--root", root],
        "download": ["download", "--root", root, "--split", "test", "--metadata", root / "nothing"],
    }[command]
    if command == "download":  # media download from an existing (damaged) catalog
        from mrw.download import download_split

        with pytest.raises(UsageError, match="catalog-only"):
            download_split(root=root, dataset="mrw", split="test", progress=False)
        return
    one_line_error(run(*args), 2, str(cat), "--catalog-only")


def test_truncated_video_shard_in_extract_frames_names_the_file(root):
    _catalog(root)
    stage = _video_stage(root)
    _truncate(shards.data_path(stage, 0))
    res = run("extract-frames", "--root", root, "--split", "test", "--workers", 1)
    # a damaged input shard fails that shard (the others complete): exit 1, one line naming it
    one_line_error(res, 1, "shard 0:", str(shards.data_path(stage, 0)), "mrw validate")


def test_truncated_frame_shard_in_extract_features_names_the_file(root):
    _catalog(root)
    _video_stage(root)
    frames = paths.frames_dir(root, "mrw", "test")
    shards.check_manifest(frames, {"stage": "frames", "fps": 8.0, "size": 256, "shard_size": 1000})
    table = pa.table({"id": ["a1"], "frames": [[b"\xff\xd8" * 3000]]})
    shards.write_shard(frames, 0, table, [{"id": "a1", "url": "u", "status": "ok", "attempts": 1}])
    _truncate(shards.data_path(frames, 0))
    res = run(
        "extract-features",
        "--root",
        root,
        "--split",
        "test",
        "--backbone",
        "resnet18",
        "--weights",
        "none",
        "--workers",
        0,
    )
    one_line_error(res, 1, "shard 0:", str(shards.data_path(frames, 0)))


@pytest.mark.parametrize(
    "damage", ["garbage-status", "garbage-manifest", "list-manifest", "stray-shard"]
)
def test_damaged_stage_files_in_info_are_one_line(root, damage):
    _catalog(root)
    stage = _video_stage(root)
    if damage == "garbage-status":
        target = shards.status_path(stage, 0)
        target.write_bytes(os.urandom(300))
    elif damage == "garbage-manifest":
        target = stage / shards.MANIFEST
        target.write_bytes(b'{"stage": "vid')
    elif damage == "list-manifest":
        target = stage / shards.MANIFEST
        target.write_text("[1, 2]\n")
    else:
        target = stage / "shard-abc.parquet"
        shutil.copy(shards.data_path(stage, 0), target)
    one_line_error(run("info", "--root", root), 2, str(target))
    if damage != "garbage-status":  # the stages refuse it up front as well
        one_line_error(run("extract-frames", "--root", root, "--split", "test"), 2, str(target))


# -- 11. a full disk ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_release(tmp_path_factory):
    return write_sample_release(
        tmp_path_factory.mktemp("disk") / "rel",
        "mrw",
        "http://127.0.0.1:9",
        counts={"train": 0, "val": 0, "test": 6},
    )


def _leftovers(root: Path) -> list:
    return [p for p in root.rglob("*") if p.name.startswith(shards.TMP_PREFIX)]


def test_full_disk_during_download_is_one_line_exit_1_and_no_scratch(
    small_release, root, monkeypatch
):
    build_catalog("mrw", "test", root=root, source=str(small_release))
    import pyarrow.parquet as pq

    real = pq.ParquetWriter

    class FullDisk(real):
        def write_table(self, *a, **k):
            super().write_table(*a, **k)
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("mrw.download.pq.ParquetWriter", FullDisk)
    res = run(
        "download",
        "--root",
        root,
        "--split",
        "test",
        "--metadata",
        small_release,
        "--from-dir",
        small_release / "media",
        "--shard-size",
        3,
        "--workers",
        1,
    )
    one_line_error(res, 1, "no space left on")
    assert _leftovers(root) == []
    assert not shards.status_shards(paths.videos_dir(root, "mrw", "test"))


def test_full_disk_while_writing_the_catalog(small_release, root, monkeypatch):
    def full(table, where, **k):
        Path(where).write_bytes(b"PAR1 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("mrw.shards.pq.write_table", full)
    res = run(
        "download", "--root", root, "--split", "test", "--catalog-only", "--metadata", small_release
    )
    one_line_error(res, 1, "no space left on")
    assert _leftovers(root) == [] and not paths.catalog_path(root, "mrw", "test").exists()


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 1 MiB filesystem (tmpfs) as the data root; root only."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_really_full_disk_download_and_rerun_cleans_up(small_release, tiny_disk, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    # clips big enough to fill the disk: the same clip under many ids
    clip = next((small_release / "media").iterdir()).read_bytes()
    ids = [f"c{i:03d}" for i in range(max(8, (3 << 20) // max(1, len(clip))))]
    for i in ids:
        (media / f"{i}.mp4").write_bytes(clip)
    records = [{"id": i, "sentence": "MRW x", "url": f"http://e.org/{i}.mp4"} for i in ids]
    release = write_mrw_release(tmp_path / "rel", records, "".join(f"{i}\n" for i in ids).encode())
    stage = paths.videos_dir(tiny_disk, "mrw", "test")
    # what a killed run leaves: a scratch file of the stage and a probe file of a dead process
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stage.mkdir(parents=True)
    (stage / f"{shards.TMP_PREFIX}decode-{dead.pid}-x.mp4").write_bytes(b"x")
    from mrw.media import PROBE_PREFIX, _tmp_dir

    probe = Path(_tmp_dir() or "/tmp") / f"{PROBE_PREFIX}{dead.pid}-stale.mp4"
    probe.write_bytes(b"x")
    cmd = [
        sys.executable,
        "-m",
        "mrw.cli",
        "download",
        "--root",
        str(tiny_disk),
        "--split",
        "test",
        "--metadata",
        str(release),
        "--from-dir",
        str(media),
        "--shard-size",
        "4",
        "--workers",
        "2",
    ]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 1, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("mrw: error:")]
    assert len(errors) == 1 and "no space left on" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert _leftovers(tiny_disk) == []
    assert not probe.exists()
    for f in shards.status_shards(stage):  # what was committed reads back whole
        assert shards.read_parquet(f).num_rows == 4


# -- 12. one run per stage folder ---------------------------------------------------------------------
HOLDER = """
import sys, time
from mrw.shards import stage_lock
with stage_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def _hold(stage: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(stage)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_download_says_who_holds_the_stage_and_exits_2(small_release, root):
    build_catalog("mrw", "test", root=root, source=str(small_release))
    stage = paths.videos_dir(root, "mrw", "test")
    stage.mkdir(parents=True)
    scratch = stage / f"{shards.TMP_PREFIX}shard-00000.parquet.1.abc"
    scratch.write_bytes(b"the first run's")
    holder = _hold(stage)
    try:
        res = run(
            "download",
            "--root",
            root,
            "--split",
            "test",
            "--metadata",
            small_release,
            "--from-dir",
            small_release / "media",
        )
        line = one_line_error(res, 2, f"pid {holder.pid}", socket.gethostname(), "started")
        assert str(stage) in line
        assert scratch.exists(), "the second run deleted the first one's file"
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock is taken over
    res = run(
        "download",
        "--root",
        root,
        "--split",
        "test",
        "--metadata",
        small_release,
        "--from-dir",
        small_release / "media",
    )
    assert res.exit_code == 0, res.output
    assert not shards.lock_path(stage).exists()


@pytest.mark.parametrize("command", ["extract-frames", "extract-features"])
def test_frames_and_features_take_their_stage_lock(root, command):
    _catalog(root)
    _video_stage(root)
    stage = (
        paths.frames_dir(root, "mrw", "test")
        if command == "extract-frames"
        else paths.features_dir(root, "mrw", "test", "resnet18")
    )
    holder = _hold(stage)
    try:
        res = run(
            command,
            "--root",
            root,
            "--split",
            "test",
            *(
                ["--backbone", "resnet18", "--weights", "none"]
                if command == "extract-features"
                else []
            ),
        )
        one_line_error(res, 2, f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()


# -- more of the same: the other release path, the other options, the other writers ---------------
@pytest.mark.parametrize("value", ["0", "-5"])
def test_meaningless_release_cap_is_refused_before_anything_is_written(tmp_path, value):
    rel = write_mrw_release(tmp_path / "rel")
    root = tmp_path / "root"
    res = run(
        "download",
        "--root",
        root,
        "--split",
        "test",
        "--metadata",
        rel,
        "--metadata-max-bytes",
        value,
    )
    one_line_error(res, 2, "--metadata-max-bytes")
    assert not root.exists()


def test_official_plain_files_release_never_keeps_an_html_page(tmp_path, monkeypatch):
    from mrw import descriptors

    www = tmp_path / "www"
    (www / "splits").mkdir(parents=True)
    (www / "tgif-v1.0.tsv").write_text("http://e.org/g1.gif\ta cat jumps\n")
    (www / "splits" / "test.txt").write_text("<!DOCTYPE html><html>rate limited</html>\n")
    root = tmp_path / "root"
    with SampleServer(www) as srv:
        desc = json.loads(json.dumps(descriptors.load_descriptor("tgif")))
        desc["release"]["files"] = {
            "tgif-v1.0.tsv": f"{srv.url}/tgif-v1.0.tsv",
            "splits/test.txt": f"{srv.url}/splits/test.txt",
        }
        monkeypatch.setattr("mrw.descriptors.load_descriptor", lambda name: desc)
        with pytest.raises(UsageError, match="HTML page"):
            build_catalog("tgif", "test", root=root)
        cache = paths.release_cache_dir(root, "tgif")
        assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == ["tgif-v1.0.tsv"]
        (www / "splits" / "test.txt").write_text("http://e.org/g1.gif\n")
        path, _ = build_catalog("tgif", "test", root=root)
        assert pa.parquet.read_table(path)["id"].to_pylist() == ["g1"]


def test_full_disk_in_build_vocab_is_one_line_and_leaves_nothing(root, monkeypatch):
    _catalog(root)
    real = Path.write_text

    def full(self, data, *a, **k):
        if self.name.startswith(shards.TMP_PREFIX):
            real(self, data[: len(data) // 2], *a, **k)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data, *a, **k)

    monkeypatch.setattr(Path, "write_text", full)
    res = run("build-vocab", "--root", root, "--split", "test")
    one_line_error(res, 1, "no space left on")
    assert _leftovers(root) == []
    assert not list(root.rglob("vocab-*.json"))
