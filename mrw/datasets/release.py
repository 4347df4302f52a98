"""Getting an official release onto disk (folder, .tar.gz or URL) and checking what is in it."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import unicodedata
import urllib.parse
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mrw import paths
from mrw.errors import FatalError, UsageError

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
    missing: list = field(default_factory=list)  # split ids with no entry in the metadata
    duplicates_collapsed: int = 0  # identical repeated records
    no_url: list = field(default_factory=list)  # items kept with no media URL (dead links)
    expected_items: int | None = None
    warnings: list = field(default_factory=list)

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
def unsafe_id_reason(item_id) -> str | None:
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
    return None


def check_id(item_id, where: str) -> str:
    reason = unsafe_id_reason(item_id)
    if reason:
        raise UsageError(f"{where}: id {item_id!r}: unsafe id ({reason})")
    return item_id


def check_url(url, item_id, where: str) -> str:
    if (
        not isinstance(url, str)
        or urllib.parse.urlsplit(url.strip()).scheme.lower() not in ("http", "https")
        or not urllib.parse.urlsplit(url.strip()).netloc
    ):
        raise UsageError(f"{where}: id {item_id!r}: URL {url!r} is not an http(s) URL")
    return url.strip()


def optional_url(url, item_id, where: str) -> str | None:
    """A release URL that may be absent: None, a blank string and a missing key mean a dead link
    (kept in the catalog with no URL); anything else must be an http(s) URL."""
    if url is None or (isinstance(url, str) and not url.strip()):
        return None
    return check_url(url, item_id, where)


def check_sentence(sentence, item_id, where: str) -> str:
    if not isinstance(sentence, str) or not sentence.strip():
        raise UsageError(f"{where}: id {item_id!r}: empty sentence")
    return sentence.strip()


def keep_first(seen: dict, item_id: str, record, where: str, report: IngestReport) -> bool:
    """Record `item_id` once: True when it is new; an identical repeat is collapsed (counted in
    the report), a repeat with other content is a hard error."""
    if item_id in seen:
        if seen[item_id] != record:
            raise UsageError(f"{where}: id {item_id!r}: duplicate id with different content")
        report.duplicates_collapsed += 1
        return False
    seen[item_id] = record
    return True


def read_id_list(path: Path, to_id=lambda line: line) -> list[str]:
    """One id (or URL) per line; blank lines skipped; duplicates are a hard error."""
    ids, seen = [], {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
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


def find_file(release_dir: Path, candidates, what: str) -> Path:
    """The first candidate relative path that exists, at the top or one folder down."""
    candidates = [candidates] if isinstance(candidates, str) else list(candidates)
    roots = [release_dir] + sorted(p for p in release_dir.iterdir() if p.is_dir())
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


def fetch_to_cache(url: str, cache_dir: Path, *, timeout: float = 60.0) -> Path:
    """Download `url` once into `cache_dir` (temporary name, then rename); reuse it afterwards."""
    import requests
    from tqdm import tqdm

    name = os.path.basename(urllib.parse.urlsplit(url).path) or "release"
    target = cache_dir / name
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".tmp-{name}.{os.getpid()}"
    try:
        with requests.get(url, stream=True, timeout=timeout) as resp:
            if 400 <= resp.status_code < 500:
                raise UsageError(f"{url}: HTTP {resp.status_code}: the release cannot be fetched")
            resp.raise_for_status()
            total = int(resp.headers.get("Content-Length") or 0) or None
            with (
                open(tmp, "wb") as out,
                tqdm(
                    total=total, unit="B", unit_scale=True, desc=f"fetching {name}", leave=False
                ) as bar,
            ):
                for chunk in resp.iter_content(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
            if total is not None and tmp.stat().st_size != total:
                raise FatalError(
                    f"{url}: truncated download ({tmp.stat().st_size} of {total} bytes)"
                )
        os.replace(tmp, target)
    except requests.RequestException as e:
        raise FatalError(f"{url}: cannot fetch the release: {e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def _safe_members(tar: tarfile.TarFile, archive: Path):
    for m in tar.getmembers():
        name = m.name
        if name.startswith("/") or ".." in Path(name).parts:
            raise UsageError(
                f"{archive}: member {name!r} would be written outside the release folder"
            )
        if m.issym() or m.islnk() or m.isdev():
            continue  # links and devices are never needed in a release; skip them
        yield m


def extract_archive(archive: Path, dest: Path) -> Path:
    """Unpack a .tar.gz/.tgz/.tar/.zip release safely (no absolute paths, no '..', no links)."""
    dest.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if info.filename.startswith("/") or ".." in Path(info.filename).parts:
                        raise UsageError(
                            f"{archive}: member {info.filename!r} would be written "
                            "outside the release folder"
                        )
                zf.extractall(dest)
        else:
            with tarfile.open(archive) as tar:
                tar.extractall(dest, members=list(_safe_members(tar, archive)))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise UsageError(f"{archive}: not a readable archive ({e})") from None
    return dest


@contextmanager
def open_release(dataset: str, source, root) -> Path:
    """Yield a folder holding the release, whatever `source` is.

    None: the official release from the descriptor, fetched once into `<root>/<ds>/release/`.
    A URL: fetched once into the same cache. A local archive: unpacked into a temporary folder.
    A folder: used as it is.
    """
    from mrw.descriptors import load_descriptor

    desc = load_descriptor(dataset)
    cache = paths.release_cache_dir(root, dataset)
    if source is None:
        release = desc["release"]
        if "files" in release:  # several plain files (TGIF)
            for rel, url in release["files"].items():
                target = cache / rel
                if not target.exists():
                    fetch_to_cache(url, target.parent)
            yield cache
            return
        source = release["url"]
    source = str(source)
    if is_url(source):
        archive = fetch_to_cache(source, cache)
        if not archive.name.lower().endswith(ARCHIVE_SUFFIXES):
            raise UsageError(
                f"{source}: a release URL must name an archive ({', '.join(ARCHIVE_SUFFIXES)})"
            )
        unpacked = cache / (archive.name + ".d")
        if not unpacked.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-unpack-", dir=cache))
            try:
                extract_archive(archive, tmp)
                os.replace(tmp, unpacked)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp)
        yield unpacked
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
        yield extract_archive(path, Path(tmp))
