"""`mrw preview`: the static site rendered by a real headless Chromium from local files, on the
sample release served with faults; retrieval ranks against the evaluator's; a 50,000-item split."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from mrw import paths, shards
from mrw.demo import SampleServer, write_sample_release
from mrw.download import download_split
from mrw.evaluate import mean_rank, median_rank, recall_at_k
from mrw.frames import extract_frames
from mrw.preview import build_preview
from mrw.releases import build_catalog

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HOSTILE = (
    "<script>document.body.setAttribute('data-pwned','1')</script>"
    '<b class="evil">bold</b> & "quotes" \'single\''
)
FAULTS = ["404", "html", "too-large", "garbage", "truncated", "redirect-loop", "500-then-ok"]

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (the setup installs Debian's `chromium`)"
)


def mrw_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mrw.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


# -- the browser -------------------------------------------------------------------------------
def chromium(page: Path, profile: Path, *mode: str) -> subprocess.CompletedProcess:
    """One headless Chromium run on a local page, with its background network services off and
    every connection it might still try sent to a closed loopback port."""
    return subprocess.run(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--metrics-recording-only",
            "--proxy-server=http://127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=10000",
            "--window-size=1280,1600",
            *mode,
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


class Dom(HTMLParser):
    """What the tests read back from `--dump-dom`: body attributes, items, queries, links."""

    def __init__(self, text: str):
        super().__init__()
        self.body: dict = {}
        self.items: list[dict] = []
        self.queries: list[dict] = []
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self.scripts = 0
        self.evil = 0
        self.tables: dict[str, list[list[str]]] = {}
        self._text: list[str] | None = None
        self._li: dict | None = None
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "body":
            self.body = a
        if tag == "script":
            self.scripts += 1
        if "evil" in classes:
            self.evil += 1
        if tag == "img":
            self.srcs.append(a.get("src", ""))
            if self.queries and self.queries[-1]["open"]:
                self.queries[-1]["imgs"] += 1
        if tag == "a":
            self.hrefs.append(a.get("href", ""))
        if tag == "article":
            self.items.append(
                {"id": a["data-id"], "status": a["data-status"], "sentences": [], "errors": []}
            )
        if tag == "section" and "query" in classes:
            self.queries.append(
                {
                    "direction": classes[1],
                    "query": a["data-query"],
                    "rank": a["data-rank"],
                    "hits": [],
                    "answers": [],
                    "imgs": 0,
                    "open": True,
                }
            )
        if "hit" in classes and self.queries:
            self.queries[-1]["hits"].append(
                {
                    "id": a["data-id"],
                    "right": "right" in classes,
                    "position": int(a["data-position"]),
                }
            )
        if "answer" in classes and self.queries:
            self.queries[-1]["answers"].append(a["data-id"])
        if tag == "p" and "error" in classes:
            self.items[-1]["errors"].append(a["data-class"])
        if tag == "li" and "sentence" in classes:
            self._li = {"text": []}
            self._text = self._li["text"]
        if tag == "table":
            self._table = a.get("class")
            self.tables[self._table] = []
        if tag == "tr" and self._table:
            self.tables[self._table].append([])
        if tag in ("td", "th") and self._table:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "li" and self._li is not None:
            self.items[-1]["sentences"].append("".join(self._li["text"]))
            self._li = self._text = None
        if tag == "section" and self.queries:
            self.queries[-1]["open"] = False
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        if tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def render(page: Path, tmp: Path) -> Dom:
    """The DOM after load, as Chromium built it; the page's own script reports its images."""
    run = chromium(page, tmp / "profile", "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    dom = Dom(run.stdout)
    assert dom.body.get("data-ready") == "1", f"{page.name}: the page's script did not run"
    assert int(dom.body["data-images"]) == len(dom.srcs)
    assert dom.body.get("data-broken") == "0", f"{page.name}: images that did not load from disk"
    assert "data-pwned" not in dom.body and dom.evil == 0, "release text was rendered as markup"
    assert dom.scripts == 1
    return dom


def assert_local(site: Path, page: Path, dom: Dom) -> None:
    """Every src and href is a relative path to a file of the site."""
    for ref in dom.srcs + dom.hrefs:
        parts = urlsplit(ref)
        assert not parts.scheme and not parts.netloc and not ref.startswith("/"), ref
        target = (page.parent / parts.path).resolve()
        assert target.is_file() and site.resolve() in target.parents, ref


def screenshot_variance(page: Path, tmp: Path) -> float:
    shot = tmp / f"{page.stem}.png"
    run = chromium(page, tmp / "profile", f"--screenshot={shot}")
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    img = cv2.imread(str(shot), cv2.IMREAD_GRAYSCALE)
    assert img is not None and img.shape == (1600, 1280)
    return float(img.astype(np.float64).var())


# -- the sample release, served with faults ---------------------------------------------------
@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """40 MRW test clips, 6 of them failing in 5 classes, one sentence hostile HTML."""
    base = tmp_path_factory.mktemp("preview")
    rel = base / "rel"
    with SampleServer(rel) as srv:
        write_sample_release(
            rel, "mrw", srv.url, counts={"train": 0, "val": 0, "test": 40}, faults=FAULTS, seed=5
        )
        records = json.loads((rel / "mrw-v1.0.json").read_text())
        plan = json.loads((rel / "faults.json").read_text())
        hostile = next(r for r in records if r["id"] not in plan)
        hostile["sentence"] = HOSTILE
        (rel / "mrw-v1.0.json").write_text(json.dumps(records))
        root = base / "root"
        build_catalog("mrw", "test", root=root, source=str(rel))
        download_split(
            root=root,
            dataset="mrw",
            split="test",
            workers=8,
            shard_size=16,
            timeout=2.0,
            retries=1,
            max_bytes=1 << 20,
            backoff=0.05,
            progress=False,
        )
    catalog = pq.read_table(paths.catalog_path(root, "mrw", "test")).to_pylist()
    status = {
        r["id"]: r for r in shards.read_status(paths.videos_dir(root, "mrw", "test")).to_pylist()
    }
    return {"root": root, "base": base, "catalog": catalog, "status": status, "hostile": hostile}


def _classes(status: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in status.values():
        if r["status"] == "failed":
            cls = r["error"].split(":")[0]
            out[cls] = out.get(cls, 0) + 1
    return out


@needs_chromium
def test_site_shows_every_item_sentence_and_failure_class_in_chromium(sample, tmp_path):
    root, catalog, status = sample["root"], sample["catalog"], sample["status"]
    classes = _classes(status)
    assert len(classes) >= 4 and sum(classes.values()) >= 5  # the faults took several forms
    site = tmp_path / "site"
    run = mrw_cli("preview", "--root", root, "--split", "test", "--out", site, "--page-size", 16)
    assert run.returncode == 0, run.stderr
    pages = sorted(site.glob("page-*.html"))
    assert [p.name for p in pages] == ["page-0001.html", "page-0002.html", "page-0003.html"]

    index = render(site / "index.html", tmp_path)
    assert_local(site, site / "index.html", index)
    assert {Path(h).name for h in index.hrefs} >= {p.name for p in pages}
    by_class = {row[0]: int(row[1]) for row in index.tables["by-class"][1:]}
    assert by_class == classes
    by_status = {row[0]: int(row[1]) for row in index.tables["by-status"][1:]}
    assert by_status == {
        "ok": len(catalog) - sum(classes.values()),
        "failed": sum(classes.values()),
    }
    hosts = index.tables["by-host"][1:]
    assert [(h[0], int(h[1])) for h in hosts] == [("127.0.0.1", sum(classes.values()))]

    shown = []
    for page in pages:
        dom = render(page, tmp_path)
        assert_local(site, page, dom)
        shown += dom.items
    assert [i["id"] for i in shown] == [r["id"] for r in catalog]  # every item, in catalog order
    seen_classes = set()
    for item, row in zip(shown, catalog):
        assert item["status"] == status[row["id"]]["status"]
        if item["status"] == "ok":
            assert item["sentences"] == row["sentences"]  # the text, exactly, as text
        else:
            assert item["errors"] == [status[row["id"]]["error"].split(":")[0]]
            seen_classes.update(item["errors"])
    assert seen_classes == set(classes)
    hostile = next(i for i in shown if i["id"] == sample["hostile"]["id"])
    assert hostile["sentences"] == [HOSTILE]
    # one strip per ok item, each a local JPEG file
    strips = {p.name for p in (site / "assets").iterdir()}
    assert len(strips) == by_status["ok"]
    assert screenshot_variance(pages[0], tmp_path) > 100.0


def test_strips_come_from_frame_shards_when_frames_were_extracted(sample, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(sample["root"], root)
    extract_frames(root=root, dataset="mrw", split="test", size=64, workers=2)
    videos = paths.videos_dir(root, "mrw", "test")
    for shard in shards.data_shards(videos):  # no video left to decode: frames only
        table = pq.read_table(shard)
        empty = table.set_column(
            table.schema.get_field_index("video"), "video", [[b""] * table.num_rows]
        )
        pq.write_table(empty, shard)
    report = build_preview(root=root, split="test", out=tmp_path / "site", echo=lambda s: None)
    ok = sum(r["status"] == "ok" for r in sample["status"].values())
    assert report.work.source == "frames" and report.work.strips_written == ok
    strip = cv2.imread(str(next((tmp_path / "site" / "assets").iterdir())))
    assert strip.shape[0] == 96 and strip.shape[1] > 96 and strip.std() > 1.0


def test_failed_only_and_limit(sample, tmp_path):
    root, status = sample["root"], sample["status"]
    failed = [r["id"] for r in sample["catalog"] if status[r["id"]]["status"] == "failed"]
    report = build_preview(
        root=root, split="test", out=tmp_path / "f", failed_only=True, echo=lambda s: None
    )
    text = (tmp_path / "f" / "page-0001.html").read_text()
    assert report.items_shown == len(failed) and report.work.strips_written == 0
    assert text.count("<article") == len(failed)
    a = build_preview(root=root, split="test", out=tmp_path / "a", limit=7, seed=3, echo=print)
    b = build_preview(root=root, split="test", out=tmp_path / "b", limit=7, seed=3, echo=print)
    c = build_preview(root=root, split="test", out=tmp_path / "c", limit=7, seed=4, echo=print)
    pick = [(tmp_path / d / "page-0001.html").read_text().count("<article") for d in "abc"]
    assert pick == [7, 7, 7] and a.items_shown == 7
    ids = [sorted(p.name for p in (tmp_path / d / "assets").iterdir()) for d in ("a", "b", "c")]
    assert ids[0] == ids[1] and ids[0] != ids[2]
    assert b.work.strips_written <= 7 and c.work.strips_written <= 7


def test_bad_input_exits_2_and_leaves_nothing(sample, tmp_path):
    root = sample["root"]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    cases = [
        (["--split", "test", "--out", busy], "not a preview"),
        (["--split", "test", "--limit", "0"], "--limit"),
        (["--split", "test", "--page-size", "-3"], "--page-size"),
        (["--split", "bogus"], "unknown split"),
        (["--split", "train"], "no catalog"),
        ([], "--split is needed"),
        (["--split", "test", "--plot"], "need --preds"),
        (["--preds", tmp_path / "nothing.json"], "no such file"),
    ]
    for args, message in cases:
        run = mrw_cli("preview", "--root", root, "--out", tmp_path / "out", *args)
        assert run.returncode == 2, (args, run.stderr)
        assert message in run.stderr and "Traceback" not in run.stderr, (args, run.stderr)
        assert sum("rror" in line for line in run.stderr.splitlines()) == 1, run.stderr
    assert not (tmp_path / "out").exists()
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(shards.TMP_PREFIX)]
    assert leftovers == []


def test_a_second_run_replaces_the_site(sample, tmp_path):
    out = tmp_path / "site"
    build_preview(root=sample["root"], split="test", out=out, limit=3, echo=lambda s: None)
    build_preview(root=sample["root"], split="test", out=out, limit=5, echo=lambda s: None)
    assert json.loads((out / "site.json").read_text())["items_shown"] == 5
    assert (out / "page-0001.html").read_text().count("<article") == 5
    assert [p.name for p in tmp_path.iterdir()] == ["site"]


# -- retrieval --------------------------------------------------------------------------------
def _preds(sample, folder: Path, seed: int = 0, k: int = 2, d: int = 8) -> tuple[Path, dict]:
    """Embeddings for the items that downloaded (the failed ones are left out, as a real run
    would): sentences near their clip, so that ranks spread from 1 to far down."""
    ok = [r for r in sample["catalog"] if sample["status"][r["id"]]["status"] == "ok"]
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((len(ok), k, d)).astype(np.float32)
    sents = (items + 1.2 * rng.standard_normal(items.shape)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "items.npy", items)
    np.save(folder / "sentences.npy", sents)
    preds = {
        "dataset": "mrw",
        "split": "test",
        "model": "noisy <i>copy</i>",
        "embeddings": {"items": "items.npy", "sentences": "sentences.npy"},
        "item_ids": [r["id"] for r in ok],
        "sentence_ids": [f"{r['id']}#0" for r in ok],
    }
    path = folder / "preds.json"
    path.write_text(json.dumps(preds))
    # every pair's score, in float64, independently of the evaluator
    scores = np.einsum("iad,jbd->ijab", items.astype(np.float64), sents.astype(np.float64))
    return path, {"ids": [r["id"] for r in ok], "scores": scores.max(axis=(2, 3)), "ok": ok}


def _metrics(ranks: list[int]) -> dict:
    r = np.asarray(ranks) - 1
    return {
        "R@1": recall_at_k(r, 1),
        "R@5": recall_at_k(r, 5),
        "R@10": recall_at_k(r, 10),
        "MedR": median_rank(r),
        "MeanR": mean_rank(r),
    }


@needs_chromium
def test_retrieval_ranks_are_the_evaluators_and_top5_render(sample, tmp_path):
    preds, truth = _preds(sample, tmp_path / "sub")
    site = tmp_path / "site"
    run = mrw_cli(
        "preview",
        "--root",
        sample["root"],
        "--preds",
        preds,
        "--out",
        site,
        "--queries",
        4,
        "--plot",
        "--limit",
        10,
    )
    assert run.returncode == 0, run.stderr
    evaluated = mrw_cli(
        "evaluate", "--root", sample["root"], preds, "--json-out", tmp_path / "r.json"
    )
    assert evaluated.returncode == 0, evaluated.stderr
    results = json.loads((tmp_path / "r.json").read_text())["protocols"]["full"]
    shown = json.loads((site / "retrieval.json").read_text())
    ids, scores = truth["ids"], truth["scores"]
    n = len(ids)
    assert shown["t2i"]["queries"] == [f"{i}#0" for i in ids] and shown["i2t"]["queries"] == ids
    # every rank equals the evaluator's metrics and an independent count (ties against)
    t2i = [int(np.sum(np.delete(scores[:, j], j) >= scores[j, j])) + 1 for j in range(n)]
    i2t = [int(np.sum(np.delete(scores[i], i) >= scores[i, i])) + 1 for i in range(n)]
    assert shown["t2i"]["ranks"] == t2i and shown["i2t"]["ranks"] == i2t
    assert 1 in t2i and max(t2i) > 5  # the picked queries include misses
    for direction, ranks in (("t2i", t2i), ("i2t", i2t)):
        for metric, value in _metrics(ranks).items():
            assert results[direction][metric] == pytest.approx(value), (direction, metric)
    # the shown queries: 4 random and 4 worst per direction; the top 5 by the true scores
    worst_t2i = sorted(range(n), key=lambda j: (-t2i[j], j))[:4]
    assert {q["query"] for q in shown["t2i"]["shown"] if q["picked"] == "worst"} <= {
        f"{ids[j]}#0" for j in sorted(range(n), key=lambda j: -t2i[j])[:8]
    }
    assert max(t2i[ids.index(q["query"][:-2])] for q in shown["t2i"]["shown"]) == t2i[worst_t2i[0]]
    for q in shown["t2i"]["shown"]:
        j = ids.index(q["query"][:-2])
        assert q["rank"] == t2i[j]
        assert [c["id"] for c in q["top"]] == [ids[c] for c in np.argsort(-scores[:, j])[:5]]
    for q in shown["i2t"]["shown"]:
        i = ids.index(q["query"])
        assert q["rank"] == i2t[i]
        assert [c["id"] for c in q["top"]] == [f"{ids[c]}#0" for c in np.argsort(-scores[i])[:5]]
    assert len(shown["t2i"]["shown"]) == len(shown["i2t"]["shown"]) == 8

    dom = render(site / "retrieval.html", tmp_path)
    assert_local(site, site / "retrieval.html", dom)
    by_query = {(q["direction"], q["query"]): q for q in dom.queries}
    assert len(by_query) == 16
    for direction in ("t2i", "i2t"):
        for q in shown[direction]["shown"]:
            page_q = by_query[(direction, q["query"])]
            assert page_q["rank"] == str(q["rank"])
            assert [h["id"] for h in page_q["hits"]] == [c["id"] for c in q["top"]]
            right = [h["position"] for h in page_q["hits"] if h["right"]]
            assert right == ([q["rank"]] if q["rank"] <= 5 else [])
            # five strips per text query, and the right clip's when it is not among them;
            # the clip itself for a video query
            missed = q["rank"] > 5
            assert page_q["imgs"] == (5 + missed if direction == "t2i" else 1)
            assert page_q["answers"] == (q["answers"] if missed else [])
            if direction == "t2i" and missed:
                assert q["answers"] == [q["query"][:-2]]
    index = render(site / "index.html", tmp_path)
    assert {"results.json", "retrieval.json", "recall.png", "retrieval.html"} <= set(index.hrefs)
    assert json.loads((site / "results.json").read_text())["protocols"]["full"] == results
    assert (site / "recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot_variance(site / "retrieval.html", tmp_path) > 100.0


def test_truncated_rankings_show_ranks_beyond_the_list(sample, tmp_path):
    _, truth = _preds(sample, tmp_path / "sub", seed=1)
    ids, scores = truth["ids"], truth["scores"]
    sids = [f"{i}#0" for i in ids]
    rankings = {
        "t2i": {s: [ids[c] for c in np.argsort(-scores[:, j])[:10]] for j, s in enumerate(sids)},
        "i2t": {i: [sids[c] for c in np.argsort(-scores[n])[:10]] for n, i in enumerate(ids)},
    }
    path = tmp_path / "rank.json"
    path.write_text(json.dumps({"dataset": "mrw", "split": "test", "rankings": rankings}))
    report = build_preview(
        root=sample["root"], preds=path, out=tmp_path / "site", queries=3, echo=lambda s: None
    )
    shown = json.loads((tmp_path / "site" / "retrieval.json").read_text())
    t2i = [int(np.sum(np.delete(scores[:, j], j) >= scores[j, j])) + 1 for j in range(len(ids))]
    assert shown["t2i"]["ranks"] == [r if r <= 10 else None for r in t2i]
    assert report.queries_shown == 12
    for q in shown["t2i"]["shown"]:
        j = sids.index(q["query"])
        assert [c["id"] for c in q["top"]] == rankings["t2i"][q["query"]][:5]
        assert q["rank"] == (t2i[j] if t2i[j] <= 10 else None)
        assert q["ranked_beyond"] == (None if t2i[j] <= 10 else 10)


def test_preds_for_another_split_is_refused(sample, tmp_path):
    preds, _ = _preds(sample, tmp_path / "sub")
    run = mrw_cli("preview", "--root", sample["root"], "--preds", preds, "--split", "val")
    assert run.returncode == 2 and "submission is for split 'test'" in run.stderr, run.stderr


# -- a 50,000-item split ----------------------------------------------------------------------
def _synthesizer(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # the script's own imports
    spec = importlib.util.spec_from_file_location(
        "bench_preview", REPO / "benchmarks" / "bench_preview.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.synthesize_split


def test_fifty_thousand_items_limit_500_stays_small_and_bounded(root, tmp_path, monkeypatch):
    failed = _synthesizer(monkeypatch)(root, 50_000)
    out = tmp_path / "site"
    report = build_preview(root=root, split="test", out=out, limit=500, echo=lambda s: None)
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert written == report.bytes_written and written < 50 * 1024 * 1024
    assert report.items_in_split == 50_000 and report.items_shown == 500 and report.pages == 3
    articles = sum(p.read_text().count("<article") for p in out.glob("page-*.html"))
    assert articles == 500
    site = json.loads((out / "site.json").read_text())
    shown_failed = articles - site["work"]["strips_written"]
    assert 0 < shown_failed < 50  # about 2% of 500
    assert site["work"]["strips_written"] + shown_failed == 500
    assert len(list((out / "assets").iterdir())) == site["work"]["strips_written"]
    assert site["work"]["row_groups_read"] <= 500
    # the counts at the top still cover the whole split
    index = (out / "index.html").read_text()
    assert f"{len(failed):,}" in index and "50,000 items" in index
    small = build_preview(
        root=root, split="test", out=tmp_path / "s", limit=20, echo=lambda s: None
    )
    assert small.work.strips_written <= 20 and small.work.row_groups_read <= 20


def test_coco_shows_each_image_once_and_ranks_five_captions(tmp_path):
    rel = tmp_path / "rel"
    with SampleServer(rel) as srv:
        write_sample_release(
            rel, "coco", srv.url, counts={"train": 0, "val": 0, "test": 6}, faults=["404"], seed=2
        )
        root = tmp_path / "root"
        build_catalog("coco", "test", root=root, source=str(rel))
        download_split(
            root=root, dataset="coco", split="test", workers=4, timeout=2.0, progress=False
        )
    report = build_preview(root=root, dataset="coco", split="test", echo=lambda s: None)
    site = paths.preview_dir(root, "coco", "test")
    assert report.out == site and report.work.source == "videos" and report.work.strips_written == 5
    videos = {
        r["id"]: r
        for f in shards.data_shards(paths.videos_dir(root, "coco", "test"))
        for r in pq.read_table(f, columns=["id", "width", "height"]).to_pylist()
    }
    text = (site / "page-0001.html").read_text()
    assert text.count("<article") == 6 and text.count('data-class="http_404"') == 1
    for item_id, row in videos.items():
        n = [r["id"] for r in pq.read_table(paths.catalog_path(root, "coco", "test")).to_pylist()]
        strip = cv2.imread(str(site / "assets" / f"item-{n.index(item_id):06d}.jpg"))
        assert strip.shape[0] == 96  # one image, its own aspect: not a row of frames
        assert abs(strip.shape[1] - 96 * row["width"] / row["height"]) <= 1

    # a score matrix over five captions per image, one tie: ranks as the protocol counts them
    catalog = pq.read_table(paths.catalog_path(root, "coco", "test")).to_pylist()
    ok = [r for r in catalog if r["id"] in videos]
    sids = [f"{r['id']}#{k}" for r in ok for k in r["protocol_sentences"]]
    owner = np.repeat(np.arange(len(ok)), [len(r["protocol_sentences"]) for r in ok])
    scores = np.random.default_rng(4).standard_normal((len(ok), len(sids)))
    scores[:, 0] = 0.5  # every image ties for caption 0: the right one ranks last, and shows so
    np.save(tmp_path / "scores.npy", scores)
    preds = tmp_path / "preds.json"
    preds.write_text(
        json.dumps(
            {
                "dataset": "coco",
                "split": "test",
                "scores": "scores.npy",
                "item_ids": [r["id"] for r in ok],
                "sentence_ids": sids,
            }
        )
    )
    build_preview(root=root, preds=preds, out=tmp_path / "r", queries=2, echo=lambda s: None)
    shown = json.loads((tmp_path / "r" / "retrieval.json").read_text())
    t2i = [
        int(np.sum(np.delete(scores[:, j], owner[j]) >= scores[owner[j], j])) + 1
        for j in range(len(sids))
    ]
    best = [scores[i, owner == i].max() for i in range(len(ok))]
    i2t = [int(np.sum(scores[i, owner != i] >= best[i])) + 1 for i in range(len(ok))]
    assert shown["t2i"]["ranks"] == t2i and shown["i2t"]["ranks"] == i2t and t2i[0] == 5
    assert sids[0] in [q["query"] for q in shown["t2i"]["shown"]]  # among the worst
    for q in shown["t2i"]["shown"]:
        j = sids.index(q["query"])
        top = [c["id"] for c in q["top"]]
        assert len(top) == 5 and sum(c["right"] for c in q["top"]) == 1
        assert top.index(ok[owner[j]]["id"]) + 1 == t2i[j]  # all five images, right one at its rank
    for q in shown["i2t"]["shown"]:
        i = [r["id"] for r in ok].index(q["query"])
        assert [c["id"] for c in q["top"]] == [
            sids[c] for c in np.argsort(-scores[i], kind="stable")[:5]
        ]


def test_a_killed_build_is_cleared_by_the_next(sample, tmp_path):
    out = tmp_path / "site"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f"{shards.TMP_PREFIX}site-{int(dead.stdout)}-abc"
    (stale / "assets").mkdir(parents=True)
    build_preview(root=sample["root"], split="test", out=out, limit=2, echo=lambda s: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]
