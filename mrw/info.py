"""`mrw info`: what exists under the root, per dataset and split, read from the files themselves."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from mrw import paths, shards
from mrw.descriptors import load_descriptor


def stage_info(stage_dir: Path, catalog_items: int | None) -> dict | None:
    """Counts of one stage folder, or None when the stage was never started."""
    if not stage_dir.is_dir():
        return None
    manifest = shards.read_manifest(stage_dir) or {}
    status = shards.read_status(stage_dir).column("status")
    ok = pc.sum(pc.equal(status, "ok")).as_py() or 0
    info = {
        "ok": ok,
        "failed": len(status) - ok,
        "shards_done": len(shards.status_shards(stage_dir)),
        "settings": {k: v for k, v in manifest.items() if k != "shard_size"},
    }
    size = manifest.get("shard_size")
    if size and catalog_items is not None:
        info["shards_total"] = math.ceil(catalog_items / size)
    return info


def collect_info(root, datasets) -> dict:
    root = paths.resolve_root(root)
    report = {"root": str(root), "datasets": {}}
    for name in datasets:
        desc = load_descriptor(name)
        splits = {}
        for split in paths.SPLITS:
            entry = {"published_items": desc["splits"][split].get("items")}
            cat = paths.catalog_path(root, name, split)
            items = None
            if cat.exists():
                meta = pq.ParquetFile(cat)
                items = meta.metadata.num_rows
                sentences = (
                    pc.sum(
                        pc.list_value_length(
                            pq.read_table(cat, columns=["sentences"]).column("sentences")
                        )
                    ).as_py()
                    or 0
                )
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
