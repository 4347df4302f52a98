"""Getting an official release onto disk (folder, .tar.gz or URL) and checking what is in it."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tarfile
import tempfile
import unicodedata
import urllib.parse
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from mrw import paths
from mrw.errors import FatalError, UsageError
from mrw.shards import TMP_PREFIX, atomic_path, pid_alive, temporary_owner

if TYPE_CHECKING:
    from mrw.fetch import Network

Record = TypeVar("Record")

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


# -- what ingestion found ---------------------------------------------------------------------
@dataclass
class IngestReport:
    """Counts of one split's ingestion; soft problems are recorded here, hard ones raise."""

    dataset: str
    split: str
    source: str = ""
    items: int = 0
    sentences: int = 0
    missing: list[str] = field(default_factory=list)  # split ids with no entry in the metadata
    duplicates_collapsed: int = 0  # identical repeated records
    no_url: list[str] = field(default_factory=list)  # items kept with no media URL (dead links)
    expected_items: int | None = None
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"{self.dataset}/{self.split}: {self.items} items, {self.sentences} sentences"
            f" (from {self.source})"
        ]
        if self.missing:
            shown = ", ".join(self.missing[:5]) + (", ..." if len(self.missing) > 5 else "")
            lines.append(
                f"  missing: {len(self.missing)} ids of the split list have no entry "
                f"in the release metadata ({shown})"
            )
        if self.no_url:
            shown = ", ".join(self.no_url[:5]) + (", ..." if len(self.no_url) > 5 else "")
            lines.append(
                f"  no URL: {len(self.no_url)} items have no media URL in the release; "
                f"kept, they fail as no_url at download ({shown})"
            )
        if self.duplicates_collapsed:
            lines.append(
                f"  duplicates: {self.duplicates_collapsed} identical repeated records collapsed"
            )
        if self.expected_items is not None and self.expected_items != self.items:
            lines.append(
                f"  size: {self.items} items, the published split has {self.expected_items}"
            )
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "source": self.source,
            "items": self.items,
            "sentences": self.sentences,
            "missing": len(self.missing),
            "no_url": len(self.no_url),
            "duplicates_collapsed": self.duplicates_collapsed,
            "expected_items": self.expected_items,
        }


# -- checks shared by every dataset -------------------------------------------------------------
def unsafe_id_reason(item_id: object) -> str | None:
    """Why an id cannot name files under the root, or None when it is safe."""
    if not isinstance(item_id, str) or item_id == "":
        return "empty id"
    if "/" in item_id or "\\" in item_id:
        return "id contains a path separator"
    if item_id in (".", "..") or ".." in item_id:
        return "id contains '..'"
    if any(unicodedata.category(c) == "Cc" for c in item_id):
        return "id contains a control character"
    if item_id != item_id.strip():
        return "id has leading or trailing whitespace"
    if not is_unicode(item_id):
        return "id is not valid Unicode (a lone surrogate)"
    return None


def is_unicode(text: str) -> bool:
    """False for a string that cannot be written as UTF-8 (JSON lets `\\ud800` through)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_id(item_id: object, where: str) -> str:
    reason = unsafe_id_reason(item_id)
    if reason or not isinstance(item_id, str):
        raise UsageError(f"{where}: id {item_id!r}: unsafe id ({reason})")
    return item_id


def check_url(url: object, item_id: object, where: str) -> str:
    if (
        not isinstance(url, str)
        or urllib.parse.urlsplit(url.strip()).scheme.lower() not in ("http", "https")
        or not urllib.parse.urlsplit(url.strip()).netloc
    ):
        raise UsageError(f"{where}: id {item_id!r}: URL {url!r} is not an http(s) URL")
    if not is_unicode(url):
        raise UsageError(
            f"{where}: id {item_id!r}: the URL is not valid Unicode (a lone surrogate)"
        )
    return url.strip()


def optional_url(url: object, item_id: object, where: str) -> str | None:
    """A release URL that may be absent: None, a blank string and a missing key mean a dead link
    (kept in the catalog with no URL); anything else must be an http(s) URL."""
    if url is None or (isinstance(url, str) and not url.strip()):
        return None
    return check_url(url, item_id, where)


def check_sentence(sentence: object, item_id: object, where: str) -> str:
    if not isinstance(sentence, str) or not sentence.strip():
        raise UsageError(f"{where}: id {item_id!r}: empty sentence")
    if not is_unicode(sentence):
        raise UsageError(
            f"{where}: id {item_id!r}: the sentence is not valid Unicode (a lone surrogate)"
        )
    return sentence.strip()


def keep_first(
    seen: dict[str, Record], item_id: str, record: Record, where: str, report: IngestReport
) -> bool:
    """Record `item_id` once: True when it is new; an identical repeat is collapsed (counted in
    the report), a repeat with other content is a hard error."""
    if item_id in seen:
        if seen[item_id] != record:
            raise UsageError(f"{where}: id {item_id!r}: duplicate id with different content")
        report.duplicates_collapsed += 1
        return False
    seen[item_id] = record
    return True


def read_id_list(path: Path, to_id: Callable[[str], object] = lambda line: line) -> list[str]:
    """One id (or URL) per line of UTF-8 text (a leading BOM is dropped); blank lines skipped;
    duplicates are a hard error."""
    ids: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(read_text_lines(path), 1):
        line = line.strip()
        if not line:
            continue
        item_id = check_id(to_id(line), f"{path}:{lineno}")
        if item_id in seen:
            raise UsageError(
                f"{path}:{lineno}: id {item_id!r}: duplicate id in the split list "
                f"(first on line {seen[item_id]})"
            )
        seen[item_id] = lineno
        ids.append(item_id)
    return ids


def read_text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file of the release (a leading BOM dropped); bad input is one
    UsageError naming the line."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UsageError(
            f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})"
        ) from None
    # universal newlines only, as reading the file in text mode gives (not str.splitlines)
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def find_file(release_dir: Path, candidates: str | Iterable[str], what: str) -> Path:
    """The first candidate relative path that exists, at the top or one folder down."""
    candidates = [candidates] if isinstance(candidates, str) else list(candidates)
    roots = [release_dir, *sorted(p for p in release_dir.iterdir() if p.is_dir())]
    for root in roots:
        for rel in candidates:
            if (root / rel).is_file():
                return root / rel
    raise UsageError(
        f"{release_dir}: the release has no {what} (looked for {', '.join(candidates)})"
    )


# -- getting the release ------------------------------------------------------------------------
def is_url(source: str) -> bool:
    return urllib.parse.urlsplit(str(source)).scheme.lower() in ("http", "https")


#: the release fetch's limits unless the command line says otherwise
RELEASE_TIMEOUT = 600.0  # seconds for the whole release download, all tries together
RELEASE_MAX_BYTES = 1 << 30  # when the descriptor gives no size
RELEASE_SIZE_FACTOR = 4  # cap = this many times the descriptor's `size_bytes`
#: unpacking stops past this many bytes (at least MIN_UNPACKED_BYTES, else this ratio of the
#: archive's size) or this many members: a release is a few files that compress a few times
UNPACK_RATIO = 100
MIN_UNPACKED_BYTES = 64 << 20
MAX_MEMBERS = 10_000


def release_max_bytes(desc: dict) -> int:
    """The default byte cap of a dataset's release download."""
    size = desc.get("release", {}).get("size_bytes")
    return RELEASE_SIZE_FACTOR * int(size) if size else RELEASE_MAX_BYTES


def fetch_to_cache(
    url: str,
    target: Path,
    *,
    timeout: float = RELEASE_TIMEOUT,
    max_bytes: int = RELEASE_MAX_BYTES,
    network: Network | None = None,
) -> Path:
    """Download `url` to `target` through a temporary name, under a byte cap and one deadline
    for the whole download; a failed or refused download leaves nothing behind."""
    from mrw.fetch import FetchConfig, Fetcher, looks_like_html

    config = FetchConfig(timeout=timeout, retries=2, max_bytes=max_bytes, use_ytdlp=False)
    with atomic_path(target) as tmp:
        result = Fetcher(config, network).fetch_file(url, tmp)
        if not result.ok:
            error_class = result.error or ""
            hint = {
                "too_large": " (raise --metadata-max-bytes if the release really is that big)",
                "timeout": " (raise --metadata-timeout on a slow link)",
            }.get(error_class, "")
            error = UsageError if error_class.startswith("http_4") else FatalError
            if error_class in ("too_large", "blocked_redirect", "bad_encoding"):
                error = UsageError
            raise error(f"{url}: the release cannot be fetched: {result.error_text}{hint}")
        with open(tmp, "rb") as fh:
            head = fh.read(512)
        if looks_like_html(head):
            raise UsageError(f"{url}: the server sent an HTML page, not the release")
    return target


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(url: str) -> str:
    """The cache folder of a release URL: two URLs never share one, whatever their file names."""
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def cached_release(
    url: str,
    cache: Path,
    metadata_file: str | Iterable[str],
    *,
    sha256: str | None = None,
    timeout: float = RELEASE_TIMEOUT,
    max_bytes: int = RELEASE_MAX_BYTES,
    network: Network | None = None,
) -> Path:
    """The unpacked release of `url`, fetched and verified once into `cache/<key of url>/`.

    The entry is built in a temporary folder and renamed into place only once the archive
    unpacks, holds `metadata_file` and matches `sha256` (when given), so a bad download (an
    HTML page, a truncated or oversized body, a bomb) is never kept and the next run fetches
    again."""
    name = os.path.basename(urllib.parse.urlsplit(url).path) or "release"
    if not name.lower().endswith(ARCHIVE_SUFFIXES):
        raise UsageError(
            f"{url}: a release URL must name an archive ({', '.join(ARCHIVE_SUFFIXES)})"
        )
    entry = cache / cache_key(url)
    unpacked = entry / (name + ".d")
    if unpacked.is_dir():
        return unpacked
    cache.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(cache)
    try:
        with atomic_path(entry) as tmp:
            tmp.mkdir()
            archive = fetch_to_cache(
                url, tmp / name, timeout=timeout, max_bytes=max_bytes, network=network
            )
            if sha256 and _file_sha256(archive) != sha256.lower():
                raise UsageError(
                    f"{url}: the download's sha256 is {_file_sha256(archive)}, the descriptor "
                    f"says {sha256}: not the official release"
                )
            extract_archive(archive, tmp / (name + ".d"))
            find_file(tmp / (name + ".d"), metadata_file, "metadata file")
            (tmp / "url.txt").write_text(url + "\n", encoding="utf-8", errors="surrogateescape")
            if entry.exists() and not unpacked.is_dir():  # a leftover without its release
                shutil.rmtree(entry)
    except UsageError as e:
        raise UsageError(str(e).replace(str(tmp / name), url)) from None
    except OSError:
        if not unpacked.is_dir():  # another run did not just put the same release there
            raise
    return unpacked


def remove_stale_temporaries(cache: Path) -> None:
    """Delete what a killed release fetch left in the cache (its pid is gone)."""
    if not cache.is_dir():
        return
    for p in cache.glob(f"{TMP_PREFIX}*"):
        pid = temporary_owner(p)
        if pid is not None and pid_alive(pid):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _safe_name(name: str, archive: Path) -> str:
    if name.startswith("/") or ".." in Path(name).parts:
        raise UsageError(f"{archive}: member {name!r} would be written outside the release folder")
    return name


class _Budget:
    """Counts unpacked bytes and members against the caps."""

    def __init__(self, archive: Path, max_bytes: int, max_members: int) -> None:
        self.archive, self.max_bytes, self.max_members = archive, max_bytes, max_members
        self.bytes = self.members = 0

    def member(self) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise UsageError(
                f"{self.archive}: more than {self.max_members} members: not a release "
                "(an archive bomb?)"
            )

    def copy(self, src: IO[bytes], dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as out:
            for block in iter(lambda: src.read(1 << 20), b""):
                self.bytes += len(block)
                if self.bytes > self.max_bytes:
                    raise UsageError(
                        f"{self.archive}: unpacks to more than {self.max_bytes} bytes: not a "
                        "release (an archive bomb?)"
                    )
                out.write(block)


def extract_archive(
    archive: Path,
    dest: Path,
    *,
    max_bytes: int | None = None,
    max_members: int = MAX_MEMBERS,
) -> Path:
    """Unpack a .tar.gz/.tgz/.tar/.zip release safely: no absolute paths, no '..', no links, at
    most `max_bytes` unpacked (default: UNPACK_RATIO times the archive, at least
    MIN_UNPACKED_BYTES) and `max_members` members. On any error `dest` is removed."""
    if max_bytes is None:
        max_bytes = max(MIN_UNPACKED_BYTES, UNPACK_RATIO * archive.stat().st_size)
    budget = _Budget(archive, max_bytes, max_members)
    dest.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    budget.member()
                    rel = _safe_name(info.filename, archive)
                    if info.is_dir():
                        (dest / rel).mkdir(parents=True, exist_ok=True)
                        continue
                    with zf.open(info) as src:
                        budget.copy(src, dest / rel)
        else:
            with tarfile.open(archive, mode="r|*") as tar:
                for m in tar:  # streamed: one pass, whatever the headers claim
                    budget.member()
                    rel = _safe_name(m.name, archive)
                    if m.isdir():
                        (dest / rel).mkdir(parents=True, exist_ok=True)
                    elif m.isfile():
                        member = tar.extractfile(m)
                        assert member is not None  # a regular member always has a file object
                        budget.copy(member, dest / rel)
                    # links and devices are never needed in a release; skipped
    except BaseException as e:
        shutil.rmtree(dest, ignore_errors=True)
        if isinstance(e, (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error)) or (
            isinstance(e, OSError) and not _is_enospc(e)
        ):
            raise UsageError(f"{archive}: not a readable archive ({e})") from None
        raise
    return dest


def _is_enospc(e: OSError) -> bool:
    return e.errno == errno.ENOSPC


@contextmanager
def open_release(
    dataset: str,
    source: str | os.PathLike[str] | None,
    root: str | os.PathLike[str] | None,
    *,
    timeout: float = RELEASE_TIMEOUT,
    max_bytes: int | None = None,
    network: Network | None = None,
) -> Iterator[Path]:
    """Yield a folder holding the release, whatever `source` is.

    None: the official release from the descriptor, fetched and verified once into
    `<root>/<ds>/release/`. A URL: the same, in a cache entry of its own. A local archive:
    unpacked into a temporary folder. A folder: used as it is. `timeout` and `max_bytes` bound
    each download (default cap: `release_max_bytes` of the descriptor).
    """
    from mrw.descriptors import load_descriptor

    desc = load_descriptor(dataset)
    release = desc["release"]
    cache = paths.release_cache_dir(root, dataset)
    if max_bytes is None:
        max_bytes = release_max_bytes(desc)
    limits: dict[str, Any] = {"timeout": timeout, "max_bytes": max_bytes, "network": network}
    checksum = None
    if source is None:
        if "files" in release:  # several plain files (TGIF)
            remove_stale_temporaries(cache)
            for rel, url in release["files"].items():
                target = cache / rel
                if not target.exists():
                    fetch_to_cache(url, target, **limits)
            yield cache
            return
        source, checksum = release["url"], release.get("sha256")
    source = str(source)
    if is_url(source):
        yield cached_release(source, cache, release["metadata_file"], sha256=checksum, **limits)
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder")
    if path.is_dir():
        yield path
        return
    if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise UsageError(
            f"{path}: expected a release folder or archive ({', '.join(ARCHIVE_SUFFIXES)})"
        )
    with tempfile.TemporaryDirectory(prefix="mrw-release-") as tmp:
        yield extract_archive(path, Path(tmp) / "release")
