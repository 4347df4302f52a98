"""`mrw preview`: a static site of a split's items, failures and retrieval results.

`DIR/index.html` holds the split's counts (by status, failure class and host) and an index of
pages; `page-NNNN.html` hold a few hundred items each; `assets/` the frame strips; with a
submission, `retrieval.html`, `results.json` and optionally `recall.png`. The site is built in a
temporary folder beside DIR and renamed into place, so DIR is either the previous site or the new
one, never half of either.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from mrw import paths, shards
from mrw.catalog import read_catalog
from mrw.errors import UsageError
from mrw.preview.html import esc, link, page, table
from mrw.preview.strips import StripWork, media_source, read_video_info, write_strips

SITE_FILE = "site.json"  # what the site shows and what building it cost; marks DIR as a preview
DEFAULT_PAGE_SIZE = 200
NOT_DOWNLOADED = "not downloaded"


@dataclass
class ItemStatus:
    status: str  # "ok", "failed" or NOT_DOWNLOADED
    error_class: str | None = None
    message: str | None = None
    stage: str | None = None  # the stage that failed it


@dataclass
class PreviewReport:
    out: Path
    items_in_split: int
    items_shown: int
    pages: int
    bytes_written: int
    work: StripWork = field(default_factory=StripWork)
    queries_shown: int = 0

    def summary(self) -> str:
        return (
            f"preview: {self.items_shown} of {self.items_in_split} items on {self.pages} pages, "
            f"{self.work.strips_written} strips from the {self.work.source} shards "
            f"({self.work.row_groups_read} row groups read), "
            + (f"{self.queries_shown} queries, " if self.queries_shown else "")
            + f"{self.bytes_written / 1e6:.1f} MB"
        )


# -- what the split holds --------------------------------------------------------------------
def item_statuses(
    root: str | os.PathLike[str] | None, dataset: str, split: str
) -> dict[str, ItemStatus]:
    """Per id, its download status, overridden by a frames failure (a clip that did not decode)."""
    out: dict[str, ItemStatus] = {}
    for stage, folder in (
        ("download", paths.videos_dir(root, dataset, split)),
        ("frames", paths.frames_dir(root, dataset, split)),
    ):
        if not shards.status_shards(folder):
            continue
        table = shards.read_status(folder)
        for item_id, st, error in zip(
            table.column("id").to_pylist(),
            table.column("status").to_pylist(),
            table.column("error").to_pylist(),
        ):
            if st == "failed":
                cls, _, message = (error or "unknown").partition(":")
                out[item_id] = ItemStatus("failed", cls.strip(), message.strip(), stage)
            elif stage == "download":
                out[item_id] = ItemStatus("ok")
    return out


def host_of(url: str | None) -> str:
    if not url:
        return "(no URL)"
    try:
        return urlsplit(url).hostname or "(no host)"
    except ValueError:
        return "(malformed URL)"


def choose_items(
    ids: list[str],
    statuses: dict[str, ItemStatus],
    limit: int | None,
    seed: int,
    failed_only: bool,
) -> list[int]:
    """Catalog indices shown: all (or all failed), or `limit` of them at random, in catalog order."""
    pool = [
        n
        for n, i in enumerate(ids)
        if not failed_only or statuses.get(i, ItemStatus(NOT_DOWNLOADED)).status == "failed"
    ]
    if limit is not None and limit < len(pool):
        pool = sorted(random.Random(seed).sample(pool, limit))
    return pool


# -- rendering -------------------------------------------------------------------------------
def _strip_html(asset: str | None, item_id: str, why: str | None) -> str:
    if asset:
        return f'<img class="strip" src="{esc(asset)}" alt="frames of {esc(item_id)}">'
    return f'<div class="nomedia">{esc(why or "no media")}</div>'


def _meta(info: dict | None) -> str:
    if not info:
        return ""
    parts = []
    if info.get("duration") is not None:
        parts.append(f"{info['duration']:.2f} s")
    if info.get("fps"):
        parts.append(f"{info['fps']:.3g} fps")
    if info.get("width") and info.get("height"):
        parts.append(f"{info['width']}×{info['height']}")
    if info.get("num_frames"):
        parts.append(f"{info['num_frames']} frames")
    if info.get("format"):
        parts.append(str(info["format"]))
    return f'<p class="meta">{esc(" · ".join(parts))}</p>'


def item_card(
    n: int,
    row: dict,
    st: ItemStatus,
    info: dict | None,
    asset: str | None,
    why: str | None,
) -> str:
    item_id = row["id"]
    protocol = set(row.get("protocol_sentences") or [])
    sentences = "".join(
        f'<li class="sentence{" protocol" if k in protocol else ""}" data-sid="{esc(f"{item_id}#{k}")}">'
        f"{esc(s)}</li>"
        for k, s in enumerate(row.get("sentences") or [])
    )
    parts = [
        f'<article class="item {esc(st.status.replace(" ", "-"))}" id="item-{n}" '
        f'data-id="{esc(item_id)}" data-status="{esc(st.status)}">',
        _strip_html(asset, item_id, why if st.status == "ok" else st.status),
        f"<h3>{esc(item_id)}</h3>",
        f'<ul class="sentences">{sentences}</ul>',
        _meta(info),
    ]
    if st.status == "failed":
        parts.append(
            f'<p class="error" data-class="{esc(st.error_class)}">'
            f'<span class="error-class">{esc(st.error_class)}</span> '
            f'<span class="message">{esc(st.stage)}: {esc(st.message)}</span></p>'
        )
    if row.get("url") or st.status != "ok":
        parts.append(f'<p class="url">{esc(row.get("url") or "(no URL)")}</p>')
    parts.append("</article>")
    return "".join(parts)


def page_name(p: int) -> str:
    return f"page-{p + 1:04d}.html"


def _nav(p: int | None, pages: int, retrieval: bool) -> str:
    parts = [link("index.html", "index")]
    if p is not None and p > 0:
        parts.append(link(page_name(p - 1), "← previous"))
    if p is not None and p + 1 < pages:
        parts.append(link(page_name(p + 1), "next →"))
    if retrieval:
        parts.append(link("retrieval.html", "retrieval"))
    return "".join(parts)


def _summary(
    dataset: str,
    split: str,
    ids: list[str],
    urls: list[str | None],
    statuses: dict[str, ItemStatus],
) -> str:
    by_status: Counter = Counter()
    classes: Counter = Counter()
    hosts: Counter = Counter()
    host_classes: dict[str, Counter] = {}
    for item_id, url in zip(ids, urls):
        st = statuses.get(item_id, ItemStatus(NOT_DOWNLOADED))
        by_status[st.status] += 1
        if st.status == "failed":
            classes[st.error_class] += 1
            hosts[host_of(url)] += 1
            host_classes.setdefault(host_of(url), Counter())[st.error_class] += 1
    out = [
        f"<p>{len(ids):,} items in {esc(dataset)}/{esc(split)}.</p>",
        "<h2>Items by status</h2>",
        table(["status", "items"], [[s, c] for s, c in by_status.most_common()], "by-status"),
    ]
    if classes:
        out += [
            "<h2>Failures by class</h2>",
            table(["class", "items"], [[k, c] for k, c in classes.most_common()], "by-class"),
            "<h2>Failures by host</h2>",
            table(
                ["host", "failed items", "classes"],
                [
                    [h, c, ", ".join(f"{k} {v}" for k, v in host_classes[h].most_common())]
                    for h, c in hosts.most_common()
                ],
                "by-host",
            ),
        ]
    return "".join(out)


# -- the site --------------------------------------------------------------------------------
def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, expected a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / SITE_FILE).is_file():
        raise UsageError(
            f"--out {out}: a folder with other files in it (not a preview): choose a new or empty one"
        )


def _remove_stale_builds(out: Path) -> None:
    """Folders that a killed run of this site left beside it (their process is gone)."""
    shards.remove_stale_scratch(out.parent, f"{shards.TMP_PREFIX}{out.name}-")


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace `out` (an earlier preview, or nothing) by the finished `tmp` in two renames."""
    old = None
    if out.exists():
        old = out.parent / f"{shards.TMP_PREFIX}{out.name}-{os.getpid()}-old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build_preview(
    root: str | os.PathLike[str] | None = None,
    dataset: str | None = None,
    split: str | None = None,
    out: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    failed_only: bool = False,
    page_size: int = DEFAULT_PAGE_SIZE,
    preds: str | os.PathLike[str] | None = None,
    queries: int = 10,
    plot: bool = False,
    allow_missing: bool = False,
    workers: int | None = None,
    progress: bool = False,
    echo: Callable[[str], None] = print,
) -> PreviewReport:
    """Write the preview site of a split (and of a submission's retrieval) to `out`."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be a positive integer, got {limit}")
    if page_size < 1:
        raise UsageError(f"--page-size must be a positive integer, got {page_size}")
    if queries < 1:
        raise UsageError(f"--queries must be a positive integer, got {queries}")
    if preds is not None:
        from mrw.evaluate import read_preds

        named = read_preds(preds)  # the submission names its dataset and split: check them first
        if dataset is not None and paths.check_dataset(dataset) != named["dataset"]:
            raise UsageError(
                f"--dataset {dataset}: the submission is for dataset {named['dataset']!r}"
            )
        if split is not None and paths.normalize_split(split) != named["split"]:
            raise UsageError(f"--split {split}: the submission is for split {named['split']!r}")
        dataset, split = named["dataset"], named["split"]
    elif split is None:
        raise UsageError("--split is needed (or --preds, whose submission names its split)")
    dataset = paths.check_dataset(dataset or "mrw")
    split = paths.normalize_split(split)
    out = Path(out) if out is not None else paths.preview_dir(root, dataset, split)
    _check_out(out)
    retrieval = None
    if preds is not None:
        from mrw.preview.retrieval import retrieve

        retrieval = retrieve(preds, root, dataset, queries, seed, allow_missing)

    catalog = read_catalog(root, dataset, split)
    ids = catalog.column("id").to_pylist()
    urls = catalog.column("url").to_pylist()
    statuses = item_statuses(root, dataset, split)
    shown = choose_items(ids, statuses, limit, seed, failed_only)
    index_of = {i: n for n, i in enumerate(ids)}
    needed = {index_of[i] for i in retrieval.items_shown()} if retrieval else set()
    needed.update(shown)

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(out)
    tmp = Path(
        tempfile.mkdtemp(prefix=f"{shards.TMP_PREFIX}{out.name}-{os.getpid()}-", dir=out.parent)
    )
    try:
        assets = tmp / "assets"
        assets.mkdir()
        asset_of = {ids[n]: f"assets/item-{n:06d}.jpg" for n in sorted(needed)}
        ok = [
            ids[n]
            for n in sorted(needed)
            if statuses.get(ids[n], ItemStatus(NOT_DOWNLOADED)).status == "ok"
        ]
        source, stage_dir = media_source(root, dataset, split)
        work, problems = write_strips(
            ok,
            source,
            stage_dir,
            {i: tmp / asset_of[i] for i in ok},
            scratch=tmp,
            workers=workers or min(4, os.cpu_count() or 1),
            progress=progress,
        )
        made = {i for i in ok if (tmp / asset_of[i]).exists()}
        video_info = read_video_info(paths.videos_dir(root, dataset, split))

        def why(item_id: str) -> str:
            return problems.get(item_id) or f"no media in the {source} shards"

        def card(n: int) -> str:
            rows = catalog.slice(n, 1).to_pylist()[0]
            st = statuses.get(ids[n], ItemStatus(NOT_DOWNLOADED))
            asset = asset_of[ids[n]] if ids[n] in made else None
            return item_card(n, rows, st, video_info.get(ids[n]), asset, why(ids[n]))

        pages = max(1, math.ceil(len(shown) / page_size))
        index_rows = []
        for p in range(pages):
            chunk = shown[p * page_size : (p + 1) * page_size]
            body = f'<div class="items">{"".join(card(n) for n in chunk)}</div>'
            title = f"{dataset}/{split}: page {p + 1} of {pages}"
            (tmp / page_name(p)).write_text(
                page(title, _nav(p, pages, retrieval is not None), body), encoding="utf-8"
            )
            failed = sum(
                statuses.get(ids[n], ItemStatus(NOT_DOWNLOADED)).status == "failed" for n in chunk
            )
            index_rows.append(
                [
                    link(page_name(p), f"page {p + 1}"),
                    len(chunk),
                    failed,
                    ids[chunk[0]] if chunk else "",
                    ids[chunk[-1]] if chunk else "",
                ]
            )

        chosen = (
            f"{len(shown):,} items shown"
            + (" (failed items only)" if failed_only else "")
            + (
                f", chosen at random with seed {seed}"
                if limit is not None and limit < len(ids)
                else ""
            )
            + f", {page_size} per page."
        )
        page_table = (
            '<table class="pages"><tr><th>page</th><th>items</th><th>failed</th>'
            "<th>first id</th><th>last id</th></tr>"
            + "".join(
                f'<tr><td>{r[0]}</td><td class="n">{r[1]}</td><td class="n">{r[2]}</td>'
                f"<td>{esc(r[3])}</td><td>{esc(r[4])}</td></tr>"
                for r in index_rows
            )
            + "</table>"
        )
        index_body = _summary(dataset, split, ids, urls, statuses) + (
            f"<h2>Pages</h2><p>{esc(chosen)}</p>{page_table}"
        )
        queries_shown = 0
        if retrieval is not None:
            from mrw.preview.render_retrieval import write_retrieval

            index_body += write_retrieval(tmp, retrieval, catalog, index_of, asset_of, made, plot)
            queries_shown = len(retrieval.t2i) + len(retrieval.i2t)
        (tmp / "index.html").write_text(
            page(f"{dataset}/{split}", _nav(None, pages, retrieval is not None), index_body),
            encoding="utf-8",
        )
        report = PreviewReport(
            out, len(ids), len(shown), pages, 0, work, queries_shown=queries_shown
        )
        site = {
            "dataset": dataset,
            "split": split,
            "items_in_split": len(ids),
            "items_shown": len(shown),
            "pages": pages,
            "page_size": page_size,
            "limit": limit,
            "seed": seed,
            "failed_only": failed_only,
            "queries_shown": queries_shown,
            "work": asdict(work),
        }
        shards.write_json_atomic(site, tmp / SITE_FILE)
        report.bytes_written = _folder_bytes(tmp)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    echo(report.summary())
    return report
