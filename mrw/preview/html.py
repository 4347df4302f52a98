"""The preview's HTML: one style sheet and one small script inline in every page, so that a page
opens from disk with nothing fetched from anywhere else.

Everything that comes from a release (ids, sentences, URLs, error messages) is untrusted and
goes through `esc`; URLs are shown as text, never as links, so every `src` and `href` in the site
is a relative path written here.
"""

from __future__ import annotations

import base64
import hashlib
import html

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 2em 2em; color: #222; background: #fafafa; }
header { position: sticky; top: 0; background: #fafafa; padding: .6em 0; border-bottom: 1px solid #ddd; }
nav a { margin-right: 1em; }
h1 { font-size: 1.4em; margin: .6em 0 .2em; }
h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .4em 0 1em; }
td, th { border: 1px solid #ddd; padding: .2em .6em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.items { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 10px; }
.item, .query { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; }
.item.failed { border-color: #d33; background: #fff5f5; }
.item h3 { font-size: 1em; margin: .2em 0; font-family: monospace; word-break: break-all; }
img.strip { display: block; max-width: 100%; height: 96px; object-fit: contain; background: #000; }
.nomedia { height: 96px; display: flex; align-items: center; justify-content: center;
  background: #eee; color: #666; }
.sentences { margin: .3em 0; padding-left: 1.2em; }
.sentence.protocol { font-weight: 600; }
.meta { color: #555; margin: .2em 0; }
.error-class { font-family: monospace; background: #d33; color: #fff; padding: 0 .3em; border-radius: 3px; }
.url { font-family: monospace; word-break: break-all; color: #555; margin: .2em 0; }
.hit { display: flex; gap: 8px; align-items: center; margin: 4px 0; padding: 2px; }
.hit.right { outline: 3px solid #2a2; }
.answer { display: flex; gap: 8px; align-items: center; margin: 8px 0 4px; padding: 2px;
  outline: 3px dashed #2a2; }
.rank { font-weight: 600; }
.rank.bad { color: #d33; }
.tag { font-size: .8em; color: #666; border: 1px solid #ccc; border-radius: 3px; padding: 0 .3em; }
"""

# After load: how many images the page has and how many did not decode (a missing or broken
# file has naturalWidth 0), written on <body> for a headless browser to read back.
SCRIPT = (
    "addEventListener('load',function(){var i=document.images,b=0;"
    "for(var n=0;n<i.length;n++){if(!i[n].complete||i[n].naturalWidth===0)b++;}"
    "var d=document.body.dataset;d.images=i.length;d.broken=b;d.ready='1';});"
)
SCRIPT_HASH = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
# Only this script may run and only local files load, should anything slip past `esc`.
CSP = (
    "default-src 'none'; img-src 'self' file:; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{SCRIPT_HASH}'; base-uri 'none'; form-action 'none'"
)


def esc(value: object) -> str:
    """HTML text or attribute value (quotes escaped too)."""
    return html.escape("" if value is None else str(value), quote=True)


def page(title: str, nav: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{esc(title)}</title><style>{STYLE}</style>"
        f"<script>{SCRIPT}</script></head>\n<body>"
        f"<header><nav>{nav}</nav></header>\n<h1>{esc(title)}</h1>\n{body}\n</body></html>\n"
    )


def link(href: str, text: str) -> str:
    """`href` is a relative path this package wrote (never a release's URL)."""
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def table(headers: list[str], rows: list[list[object]], cls: str) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{v:,}</td>' if isinstance(v, int) else f"<td>{esc(v)}</td>" for v in row
        )
        + "</tr>"
        for row in rows
    )
    return f'<table class="{esc(cls)}"><tr>{head}</tr>{body}</table>'
