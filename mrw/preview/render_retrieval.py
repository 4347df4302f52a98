"""The retrieval page of the preview: per shown text query its top items as frame strips, per
shown item its top sentences, the right answers outlined and the right answer's rank given."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from mrw import shards
from mrw.evaluate import METRICS, load_leaderboard, plot_recall_curves
from mrw.preview.html import esc, link, page, table
from mrw.preview.retrieval import TOP_K, Retrieval, Shown

RESULTS_FILE = "results.json"
RETRIEVAL_JSON = "retrieval.json"
PLOT_FILE = "recall.png"


class _Sentences:
    """Sentence text by sentence id `<item id>#<n>`, from the catalog rows it needs."""

    def __init__(self, catalog: pa.Table, index_of: dict[str, int]):
        self.catalog, self.index_of = catalog, index_of
        self._rows: dict[int, list[str]] = {}

    def __call__(self, sid: str) -> str:
        item_id, _, k = sid.rpartition("#")
        n = self.index_of[item_id]
        if n not in self._rows:
            self._rows[n] = self.catalog.column("sentences")[n].as_py() or []
        return self._rows[n][int(k)]


def _rank_html(q: Shown) -> str:
    if q.rank is None:
        text, bad = f"right answer beyond the top {q.ranked_beyond}", True
    else:
        text, bad = f"right answer at rank {q.rank}", q.rank > TOP_K
    return f'<span class="rank{" bad" if bad else ""}">{esc(text)}</span>'


def _strip(item_id: str, asset_of: dict[str, str], made: set[str]) -> str:
    if item_id in made:
        return f'<img class="strip" src="{esc(asset_of[item_id])}" alt="frames of {esc(item_id)}">'
    return '<div class="nomedia">no media</div>'


def _score(c: dict) -> str:
    return "" if c["score"] is None else f" · score {c['score']:.4f}"


def _t2i_html(
    q: Shown, sentence: Callable[[str], str], asset_of: dict[str, str], made: set[str]
) -> str:
    hits = "".join(
        f'<div class="hit{" right" if c["right"] else ""}" data-id="{esc(c["id"])}" '
        f'data-position="{p + 1}">{_strip(c["id"], asset_of, made)}'
        f"<div>{p + 1}. <code>{esc(c['id'])}</code>{esc(_score(c))}"
        f"{' · <b>right</b>' if c['right'] else ''}</div></div>"
        for p, c in enumerate(q.top)
    )
    answers = "".join(
        f'<div class="answer" data-id="{esc(a)}">{_strip(a, asset_of, made)}'
        f"<div>the right one: <code>{esc(a)}</code>, {_rank_html(q)}</div></div>"
        for a in q.answers
    )
    return (
        f'<section class="query t2i" data-query="{esc(q.query)}" data-rank="{esc(q.rank)}" '
        f'data-picked="{esc(q.picked)}"><p><span class="tag">{esc(q.picked)}</span> '
        f"<q>{esc(sentence(q.query))}</q> <code>{esc(q.query)}</code><br>{_rank_html(q)}</p>"
        f"{hits}{answers}</section>"
    )


def _i2t_html(
    q: Shown, sentence: Callable[[str], str], asset_of: dict[str, str], made: set[str]
) -> str:
    hits = "".join(
        f'<li class="hit{" right" if c["right"] else ""}" data-id="{esc(c["id"])}" '
        f'data-position="{p + 1}">{esc(sentence(c["id"]))} <code>{esc(c["id"])}</code>'
        f"{esc(_score(c))}{' · <b>right</b>' if c['right'] else ''}</li>"
        for p, c in enumerate(q.top)
    )
    answers = "".join(
        f'<li class="answer" data-id="{esc(a)}">{esc(sentence(a))} <code>{esc(a)}</code></li>'
        for a in q.answers
    )
    if answers:
        answers = f"<p>Its sentences, {_rank_html(q)}:</p><ul>{answers}</ul>"
    return (
        f'<section class="query i2t" data-query="{esc(q.query)}" data-rank="{esc(q.rank)}" '
        f'data-picked="{esc(q.picked)}"><p><span class="tag">{esc(q.picked)}</span> '
        f"<code>{esc(q.query)}</code> {_rank_html(q)}</p>{_strip(q.query, asset_of, made)}"
        f"<ol>{hits}</ol>{answers}</section>"
    )


def _metrics_table(results: dict) -> str:
    rows = []
    for name, proto in results["protocols"].items():
        for d in ("i2t", "t2i"):
            rows.append(
                [name, d, *("-" if proto[d][m] is None else f"{proto[d][m]:.4g}" for m in METRICS)]
            )
    return table(["protocol", "direction", *METRICS], rows, "metrics")


def write_retrieval(
    site: Path,
    retrieval: Retrieval,
    catalog: pa.Table,
    index_of: dict[str, int],
    asset_of: dict[str, str],
    made: set[str],
    plot: bool,
) -> str:
    """Write retrieval.html, results.json, retrieval.json (and recall.png); return the index's
    section that links them."""
    results = retrieval.results
    shards.write_json_atomic(results, site / RESULTS_FILE)
    shards.write_json_atomic(retrieval.to_json(), site / RETRIEVAL_JSON)
    files = [link(RESULTS_FILE, "results JSON"), link(RETRIEVAL_JSON, "every query's rank (JSON)")]
    figure = ""
    if plot:
        plot_recall_curves(
            results, retrieval.curves, load_leaderboard(results["dataset"]), site / PLOT_FILE
        )
        files.append(link(PLOT_FILE, "Recall@K plot"))
        figure = f'<p><img class="plot" src="{PLOT_FILE}" alt="Recall@K curves"></p>'
    sentence = _Sentences(catalog, index_of)
    coverage = results.get("coverage")
    note = (
        f"<p>{coverage['left_out']:,} of {coverage['catalog_items']:,} items left out of the "
        f"evaluation: {esc(coverage['why'])}.</p>"
        if coverage
        else ""
    )
    head = (
        f"<p>Model <b>{esc(results['model'])}</b>, protocol {esc(retrieval.protocol)}: "
        f"{results['num_items']:,} items, {results['num_sentences']:,} sentences. "
        "Queries picked at random, then the worst-ranked ones. "
        + " · ".join(files)
        + f"</p>{note}{_metrics_table(results)}{figure}"
    )
    body = (
        head
        + f"<h2>Text → {'image' if results['dataset'] == 'coco' else 'video'}: top {TOP_K}</h2>"
        + "".join(_t2i_html(q, sentence, asset_of, made) for q in retrieval.t2i)
        + f"<h2>{'Image' if results['dataset'] == 'coco' else 'Video'} → text: top {TOP_K}</h2>"
        + "".join(_i2t_html(q, sentence, asset_of, made) for q in retrieval.i2t)
    )
    nav = link("index.html", "index")
    title = f"{results['dataset']}/{results['split']}: retrieval of {results['model']}"
    (site / "retrieval.html").write_text(page(title, nav, body), encoding="utf-8")
    return f"<h2>Retrieval</h2>{head}<p>{link('retrieval.html', 'the retrieved items and sentences')}</p>"
