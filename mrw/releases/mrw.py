"""MRW: `mrw-v1.0.json` (objects with id, sentence and a video URL) plus `split/<split>.tsv`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mrw.errors import UsageError
from mrw.releases.release import (
    IngestReport,
    check_id,
    check_sentence,
    find_file,
    keep_first,
    optional_url,
    read_id_list,
)


def _lookup(obj: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def load_json_array(path: Path) -> Any:
    """A release's JSON file (UTF-8, a leading BOM allowed); bad input is one UsageError."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            data = json.load(fh)
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text ({e.reason} at offset {e.start})") from None
    except RecursionError:
        raise UsageError(f"{path}: not a release file (JSON nested too deeply)") from None
    except ValueError as e:  # JSONDecodeError, and integers over Python's digit limit
        raise UsageError(f"{path}: not valid JSON ({_short(str(e))})") from None
    return data


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_entries(
    meta_path: Path, url_fields: Iterable[str], report: IngestReport
) -> dict[str, tuple[str, str | None]]:
    """id -> (sentence, url or None) for every record of the release file, validated."""
    data = load_json_array(meta_path)
    if not isinstance(data, list):
        raise UsageError(f"{meta_path}: expected a JSON array of objects")
    entries: dict[str, tuple[str, str | None]] = {}
    for index, obj in enumerate(data):
        where = f"{meta_path}[{index}]"
        if not isinstance(obj, dict):
            raise UsageError(f"{where}: expected an object, got {type(obj).__name__}")
        if "id" not in obj:
            raise UsageError(f"{where}: record has no 'id'")
        item_id = check_id(str(obj["id"]) if isinstance(obj["id"], int) else obj["id"], where)
        sentence = check_sentence(obj.get("sentence"), item_id, where)
        # a dead link (an empty or missing URL) stays an item, with no URL
        url = next((u for u in (_lookup(obj, f) for f in url_fields) if not _blank(u)), None)
        keep_first(entries, item_id, (sentence, optional_url(url, item_id, where)), where, report)
    return entries


def read_split(release_dir: Path, split: str, desc: dict, report: IngestReport) -> list[dict]:
    rel = desc["release"]
    meta_path = find_file(release_dir, rel["metadata_file"], "MRW metadata file")
    split_path = find_file(meta_path.parent, rel["split_files"][split], f"'{split}' split list")
    entries = read_entries(meta_path, rel["url_fields"], report)
    rows = []
    for item_id in read_id_list(split_path):
        if item_id not in entries:
            report.missing.append(item_id)
            continue
        sentence, url = entries[item_id]
        rows.append({"id": item_id, "sentences": [sentence], "url": url, "protocol_sentences": [0]})
    return rows
