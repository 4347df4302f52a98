"""MS-COCO in Karpathy's splits: `dataset_coco.json`; `restval` joins `train`; five captions each."""

from __future__ import annotations

from pathlib import Path

from mrw.errors import UsageError
from mrw.releases.mrw import load_json_array
from mrw.releases.release import (
    IngestReport,
    check_id,
    check_sentence,
    find_file,
    keep_first,
    optional_url,
)

CAPTIONS_PER_IMAGE = 5


def read_split(release_dir: Path, split: str, desc: dict, report: IngestReport) -> list[dict]:
    rel = desc["release"]
    path = find_file(release_dir, rel["metadata_file"], "Karpathy split file")
    data = load_json_array(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UsageError(f"{path}: expected an object with an 'images' array")
    wanted = set(rel["split_names"][split])
    rows: list[dict] = []
    seen: dict[str, dict] = {}
    short = 0
    for index, img in enumerate(data["images"]):
        where = f"{path}:images[{index}]"
        if not isinstance(img, dict):
            raise UsageError(f"{where}: expected an object")
        if img.get("split") not in wanted:
            continue
        for key in ("cocoid", "sentences"):
            if key not in img:
                raise UsageError(f"{where}: image has no {key!r}")
        item_id = check_id(str(img["cocoid"]), where)
        sentences = []
        for s in img["sentences"]:
            raw = s.get("raw") if isinstance(s, dict) else None
            sentences.append(check_sentence(raw, item_id, where))
        if not sentences:
            raise UsageError(f"{where}: id {item_id!r}: image has no caption")
        # Karpathy's file names no URL; COCO's own annotations call it `coco_url`: use it when
        # given. An image with neither a URL nor a file name is a dead link, kept with no URL.
        filepath, filename = img.get("filepath") or None, img.get("filename") or None
        url = img.get("coco_url")
        if (url is None or (isinstance(url, str) and not url.strip())) and filepath and filename:
            url = rel["image_url_template"].format(filepath=filepath, filename=filename)
        url = optional_url(url, item_id, where)
        row = {
            "id": item_id,
            "sentences": sentences,
            "url": url,
            "protocol_sentences": list(range(min(CAPTIONS_PER_IMAGE, len(sentences)))),
            "cocoid": int(img["cocoid"]),
            "filepath": filepath,
            "filename": filename,
        }
        if not keep_first(seen, item_id, row, where, report):
            continue
        short += len(sentences) < CAPTIONS_PER_IMAGE
        rows.append(row)
    if short:
        report.warnings.append(f"{short} images have fewer than {CAPTIONS_PER_IMAGE} captions")
    return rows
