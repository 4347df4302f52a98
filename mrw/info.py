"""`mrw info`: what exists under the root, per dataset and split, read from the files themselves;
`mrw info --failures`: what failed, by class and by host, and how much of each split is usable."""

from __future__ import annotations

import math
import os
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from mrw import paths, shards
from mrw.catalog import read_catalog
from mrw.descriptors import load_descriptor


def stage_info(stage_dir: Path, catalog_items: int | None) -> dict | None:
    """Counts of one stage folder, or None when the stage was never started."""
    if not stage_dir.is_dir():
        return None
    manifest = shards.read_manifest(stage_dir) or {}
    shards.data_shards(stage_dir)  # a stray shard-*.parquet is reported here, not later
    status = shards.read_status(stage_dir).column("status")
    ok = pc.sum(pc.equal(status, "ok")).as_py() or 0
    info: dict[str, Any] = {
        "ok": ok,
        "failed": len(status) - ok,
        "shards_done": len(shards.status_shards(stage_dir)),
        "settings": {k: v for k, v in manifest.items() if k != "shard_size"},
    }
    size = manifest.get("shard_size")
    if size and catalog_items is not None:
        info["shards_total"] = math.ceil(catalog_items / size)
    return info


def collect_info(root: str | os.PathLike[str] | None, datasets: Iterable[str]) -> dict:
    root = paths.resolve_root(root)
    report: dict[str, Any] = {"root": str(root), "datasets": {}}
    for name in datasets:
        desc = load_descriptor(name)
        splits = {}
        for split in paths.SPLITS:
            entry = {"published_items": desc["splits"][split].get("items")}
            cat = paths.catalog_path(root, name, split)
            items = None
            if cat.exists():
                column = read_catalog(root, name, split, columns=["sentences"]).column("sentences")
                items = len(column)
                sentences = pc.sum(pc.list_value_length(column)).as_py() or 0
                entry["catalog"] = {"items": items, "sentences": sentences}
            stages = {}
            for stage, folder in (
                ("videos", paths.videos_dir(root, name, split)),
                ("frames", paths.frames_dir(root, name, split)),
            ):
                got = stage_info(folder, items)
                if got:
                    stages[stage] = got
            features_root = paths.features_root(root, name)
            if features_root.is_dir():
                for backbone_dir in sorted(p for p in features_root.iterdir() if p.is_dir()):
                    got = stage_info(backbone_dir / split, items)
                    if got:
                        stages[f"features/{backbone_dir.name}"] = got
            entry["stages"] = stages
            splits[split] = entry
        report["datasets"][name] = {"title": desc["title"], "splits": splits}
    return report


def format_info(report: dict) -> str:
    lines = [f"root: {report['root']}"]
    for name, ds in report["datasets"].items():
        lines.append(f"\n{name}  ({ds['title']})")
        lines.append(f"  {'split':<6} {'published':>9} {'catalog':>8} {'sentences':>9}  stages")
        for split, e in ds["splits"].items():
            cat = e.get("catalog")
            published = e["published_items"]
            stage_txt = []
            for stage, s in e["stages"].items():
                shards_txt = (
                    f"{s['shards_done']}/{s['shards_total']}"
                    if "shards_total" in s
                    else str(s["shards_done"])
                )
                stage_txt.append(
                    f"{stage}: {s['ok']} ok, {s['failed']} failed, shards {shards_txt}"
                )
            lines.append(
                f"  {split:<6} {published if published is not None else '-':>9} "
                f"{cat['items'] if cat else '-':>8} {cat['sentences'] if cat else '-':>9}  "
                + ("; ".join(stage_txt) if stage_txt else ("catalog" if cat else "nothing yet"))
            )
    return "\n".join(lines)


# -- mrw info --failures ------------------------------------------------------------------------
#: example ids shown per failure class and per host
EXAMPLES = 3


def _host(url: str | None) -> str:
    if not url:
        return "(no URL)"
    return urllib.parse.urlsplit(url).hostname or "(no host)"


def stage_failures(stage_dir: Path) -> dict | None:
    """A stage's failed items by class and by host, with counts and example ids; None when the
    stage was never started. Only the failed rows are turned into Python objects."""
    if not stage_dir.is_dir():
        return None
    status = shards.read_status(stage_dir)
    failed = status.filter(pc.not_equal(status.column("status"), "ok"))
    by_class: dict[str, dict] = {}
    by_host: dict[str, dict] = {}
    for row in failed.select(["id", "url", "error"]).to_pylist():
        cls = (row["error"] or "unknown").split(":", 1)[0]
        entry = by_class.setdefault(cls, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < EXAMPLES:
            entry["examples"].append(row["id"])
        host = by_host.setdefault(_host(row["url"]), {"count": 0, "classes": {}, "examples": []})
        host["count"] += 1
        host["classes"][cls] = host["classes"].get(cls, 0) + 1
        if len(host["examples"]) < EXAMPLES:
            host["examples"].append(row["id"])

    def ranked(d: dict) -> dict:
        return dict(sorted(d.items(), key=lambda kv: (-kv[1]["count"], kv[0])))

    for host in by_host.values():
        host["classes"] = dict(sorted(host["classes"].items(), key=lambda kv: (-kv[1], kv[0])))
    return {
        "items": len(status),
        "ok": len(status) - len(failed),
        "failed": len(failed),
        "by_class": ranked(by_class),
        "by_host": ranked(by_host),
        "_ok_ids": set(
            status.filter(pc.equal(status.column("status"), "ok")).column("id").to_pylist()
        ),
        "_failed_ids": set(failed.column("id").to_pylist()),
    }


def collect_failures(
    root: str | os.PathLike[str] | None,
    datasets: Iterable[str],
    splits: Iterable[str] | None = None,
) -> dict:
    """Failures of every started split, per stage, and the share of the split that is usable:
    downloaded, and failed by no later stage."""
    root = paths.resolve_root(root)
    report: dict[str, Any] = {"root": str(root), "splits": []}
    for name in datasets:
        for split in splits or paths.SPLITS:
            split = paths.normalize_split(split)
            cat = paths.catalog_path(root, name, split)
            items = (
                read_catalog(root, name, split, columns=["id"]).num_rows if cat.exists() else None
            )
            stages = {}
            for stage, folder in _stage_dirs(root, name, split):
                got = stage_failures(folder)
                if got is not None:
                    stages[stage] = got
            if not stages:
                continue
            # usable: downloaded, and failed by no later stage (one not run yet fails nothing)
            videos = stages.get("videos")
            usable_ids = videos["_ok_ids"] if videos else set()
            for s in stages.values():
                failed_ids = s.pop("_failed_ids")
                s.pop("_ok_ids")
                if s is not videos:
                    usable_ids = usable_ids - failed_ids
            entry = {
                "dataset": name,
                "split": split,
                "items": items,
                "usable": len(usable_ids),
                "usable_share": round(len(usable_ids) / items, 6) if items else None,
                # items the download has not reached yet (incomplete or missing shards)
                "not_downloaded": (items - videos["items"]) if items and videos else None,
                "stages": stages,
            }
            report["splits"].append(entry)
    return report


def _stage_dirs(root: Path, dataset: str, split: str) -> list[tuple[str, Path]]:
    found = [
        ("videos", paths.videos_dir(root, dataset, split)),
        ("frames", paths.frames_dir(root, dataset, split)),
    ]
    features_root = paths.dataset_dir(root, dataset) / "features"
    if features_root.is_dir():
        for backbone_dir in sorted(p for p in features_root.iterdir() if p.is_dir()):
            found.append((f"features/{backbone_dir.name}", backbone_dir / split))
    return found


def format_failures(report: dict) -> str:
    lines = [f"root: {report['root']}"]
    if not report["splits"]:
        lines.append("no split has been downloaded yet: nothing failed")
    for e in report["splits"]:
        share = f" ({100 * e['usable_share']:.1f}%)" if e["usable_share"] is not None else ""
        items = e["items"] if e["items"] is not None else "?"
        head = f"\n{e['dataset']}/{e['split']}: {items} items, {e['usable']} usable{share}"
        if e["not_downloaded"]:
            head += f", {e['not_downloaded']} not downloaded yet"
        lines.append(head)
        for stage, s in e["stages"].items():
            lines.append(f"  {stage}: {s['ok']} ok, {s['failed']} failed")
            if not s["failed"]:
                continue
            width = max(len(k) for k in [*s["by_class"], *s["by_host"]])
            lines.append("    by class:")
            for cls, c in s["by_class"].items():
                lines.append(
                    f"      {cls:<{width}} {c['count']:>7}  e.g. {', '.join(c['examples'])}"
                )
            lines.append("    by host:")
            for host, h in s["by_host"].items():
                classes = ", ".join(f"{k} {n}" for k, n in h["classes"].items())
                lines.append(
                    f"      {host:<{width}} {h['count']:>7}  {classes}; "
                    f"e.g. {', '.join(h['examples'])}"
                )
    return "\n".join(lines)
