"""TGIF: `tgif-v1.0.tsv` (`<gif url>\\t<sentence>`, one row per sentence) plus `splits/<split>.txt`.

The id of a GIF is the file name of its URL without `.gif`, as the reference loader named it. The
standard protocol uses one sentence per GIF: the last TSV row for that GIF, which is the one the
reference loader's dict kept; the catalog keeps every sentence in release order.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from mrw.errors import UsageError
from mrw.releases.release import (
    IngestReport,
    check_id,
    check_sentence,
    check_url,
    find_file,
    read_id_list,
    read_text_lines,
)


def id_from_url(url: str) -> str:
    name = urllib.parse.urlsplit(url.strip()).path.rsplit("/", 1)[-1]
    return name[:-4] if name.lower().endswith(".gif") else name


def read_sentences(
    tsv_path: Path, report: IngestReport | None = None
) -> tuple[dict[str, list[str]], dict[str, str | None]]:
    """id -> sentences (file order) and id -> URL (None for a bare file name: a dead link),
    validated. A row with nothing in its URL field names no GIF: skipped, with a warning."""
    sentences: dict[str, list[str]] = {}
    urls: dict[str, str | None] = {}
    nameless = 0
    for lineno, line in enumerate(read_text_lines(tsv_path), 1):
        if not line.strip():
            continue
        where = f"{tsv_path}:{lineno}"
        parts = line.split("\t")
        if len(parts) < 2:
            raise UsageError(f"{where}: expected '<gif url><TAB><sentence>'")
        url: str | None = parts[0].strip()
        if not url:
            nameless += 1
            continue
        item_id = check_id(id_from_url(url), where)
        # a bare file name (no scheme) identifies the GIF but gives no link to it
        url = check_url(url, item_id, where) if urllib.parse.urlsplit(url).scheme else None
        sentence = check_sentence(parts[1], item_id, where)
        if item_id in urls and urls[item_id] != url:
            raise UsageError(
                f"{where}: id {item_id!r}: duplicate id for two different URLs "
                f"({urls[item_id]} and {url})"
            )
        urls[item_id] = url
        sentences.setdefault(item_id, []).append(sentence)
    if nameless and report is not None:
        report.warnings.append(
            f"{nameless} rows of {tsv_path.name} have no GIF URL or name: skipped"
        )
    return sentences, urls


def read_split(release_dir: Path, split: str, desc: dict, report: IngestReport) -> list[dict]:
    rel = desc["release"]
    tsv_path = find_file(release_dir, rel["metadata_file"], "TGIF sentence file")
    split_path = find_file(tsv_path.parent, rel["split_files"][split], f"'{split}' split list")
    sentences, urls = read_sentences(tsv_path, report)
    rows = []
    for item_id in read_id_list(split_path, to_id=id_from_url):
        if item_id not in sentences:
            report.missing.append(item_id)
            continue
        sents = sentences[item_id]
        rows.append(
            {
                "id": item_id,
                "sentences": sents,
                "url": urls[item_id],
                "protocol_sentences": [len(sents) - 1],
            }
        )
    return rows
