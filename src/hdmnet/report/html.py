"""Self-contained HTML: inline CSS, figures as base64 data URIs (PNG; image grids as JPEG),
no external JS, CSS or fonts.

The single file can be mailed or attached and still shows everything. A small inline script
records, once the page has loaded, how many images decoded (``data-images-decoded`` on
``<body>``); the browser test reads it from the DOM.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from hdmnet.report.tables import MISSING, Cell, Table, cells

JPEG_QUALITY = 85

CSS = """
:root { --fg: #1d232a; --muted: #5b6570; --line: #d5dae0; --band: #f4f6f8;
        --pos: #1a7f37; --neg: #c62828; --accent: #2f5fa8; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--fg); margin: 0 auto; max-width: 1180px; padding: 1.5rem 1.2rem 4rem; }
h1 { font-size: 1.6rem; margin: 0 0 .4rem; }
h2 { font-size: 1.25rem; border-bottom: 2px solid var(--line); padding-bottom: .25rem;
     margin-top: 2.4rem; }
h3 { font-size: 1.05rem; margin: 1.6rem 0 .5rem; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem;
          margin: .6rem 0; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; font-family: ui-monospace, "DejaVu Sans Mono", monospace;
             font-size: .9rem; }
.callout { border-left: 4px solid var(--accent); background: var(--band); padding: .6rem .9rem;
           margin: .8rem 0; }
.callout.warn { border-left-color: #d08700; }
nav ul { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: .3rem 1.2rem; }
nav a { color: var(--accent); text-decoration: none; }
.scroll { overflow-x: auto; margin: .4rem 0; }
table { border-collapse: collapse; font-size: .86rem; font-variant-numeric: tabular-nums; }
th, td { padding: .28rem .55rem; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { background: var(--band); text-align: left; position: sticky; top: 0; }
td.num, th.num { text-align: right; }
tr.group-start td { border-top: 2px solid #aab3bd; }
tr.paper td { color: var(--muted); font-style: italic; }
tr.diff td { background: #fbfbf3; }
tr.full td { font-weight: 600; }
.pos { color: var(--pos); }
.neg { color: var(--neg); }
.missing { color: #9aa3ad; }
ul.notes { color: var(--muted); font-size: .85rem; margin: .3rem 0 0; padding-left: 1.2rem; }
figure { margin: 1rem 0 1.6rem; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: .85rem; margin-top: .3rem; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: .85rem; }
details summary { cursor: pointer; color: var(--accent); }
"""

# Counts decoded images so a headless browser test can check them from the dumped DOM.
SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-total", String(imgs.length));
  document.body.setAttribute("data-images-decoded", String(ok));
});
"""


@dataclass(frozen=True)
class Section:
    """A top-level part of the page: an anchor id, a heading and its HTML body."""

    id: str
    title: str
    body: str


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _delta_span(text: str) -> str:
    if text == MISSING:
        return f'<span class="missing">{MISSING}</span>'
    cls = "neg" if text.startswith("-") else "pos"
    return f'<span class="{cls}">{esc(text)}</span>'


def _cell_html(cell: Cell) -> str:
    if cell.missing:
        body = f'<span class="missing">{MISSING}</span>'
    elif cell.signed:
        body = _delta_span(cell.text)
    elif cell.delta is not None:
        body = f"{esc(cell.text)} <small>({_delta_span(cell.delta)})</small>"
    else:
        body = esc(cell.text)
    cls = ' class="num"' if cell.numeric else ""
    return f"<td{cls}>{body}</td>"


def table_html(table: Table, caption: bool = False) -> str:
    """The table with group separators, paper and difference rows styled, notes below."""
    head = "".join(
        f"<th{'' if c.kind == 'text' else ' class=num'}>{esc(c.label)}</th>" for c in table.columns
    )
    rows = []
    previous: str | None = None
    for row, row_cells in zip(table.rows, cells(table), strict=True):
        classes = [row.role if row.role in ("paper", "diff", "full") else "ours"]
        if previous is not None and row.group != previous:
            classes.append("group-start")
        previous = row.group
        body = "".join(_cell_html(cell) for cell in row_cells)
        rows.append(f'<tr class="{" ".join(classes)}">{body}</tr>')
    title = f"<h3>{esc(table.title)}</h3>" if caption else ""
    notes = "".join(f"<li>{esc(n)}</li>" for n in table.notes)
    return (
        f'{title}<div class="scroll"><table data-table="{esc(table.name)}">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        + (f'<ul class="notes">{notes}</ul>' if notes else "")
    )


def simple_table(headers: Sequence[str], rows: Iterable[Sequence[object]], name: str = "") -> str:
    """A plain table of already formatted cells (escaped here)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    attr = f' data-table="{esc(name)}"' if name else ""
    return (
        f'<div class="scroll"><table{attr}><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def data_uri(png: bytes | Path, photo: bool = False) -> str:
    """A PNG as a data URI; ``photo``: re-encoded as JPEG first (image grids are 5-10 times
    smaller that way, which keeps the single HTML file small enough to mail)."""
    data = png.read_bytes() if isinstance(png, Path) else png
    mime = "image/png"
    if photo:
        with Image.open(io.BytesIO(data)) as image:
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        data, mime = out.getvalue(), "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def figure_html(png: bytes | Path, alt: str, caption: str = "", photo: bool = False) -> str:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{data_uri(png, photo)}" alt="{esc(alt)}">{cap}</figure>'


def page(title: str, header: str, sections: Sequence[Section]) -> str:
    """The whole document: header, a table of contents, the sections."""
    toc = "".join(f'<li><a href="#{esc(s.id)}">{esc(s.title)}</a></li>' for s in sections)
    body = "".join(
        f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>"
        f"<body><header>{header}</header><nav><ul>{toc}</ul></nav>{body}"
        f"<script>{SCRIPT}</script></body></html>\n"
    )
