"""The HTML report, rendered from the jinja2 template ``resources/report.html.j2``.

One self-contained file: inline CSS, figures as base64 data URIs (PNG; image grids as JPEG), no
external JS, CSS or fonts, so that it can be mailed or attached and still shows everything.
Autoescape is on: every value from the records reaches the page escaped. A small inline script
records, once the page has loaded, how many images decoded (``data-images-decoded`` on
``<body>``); the browser test reads it from the DOM.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from PIL import Image

from hdmnet.report.table import NOISE, cells

JPEG_QUALITY = 85


@dataclass(frozen=True)
class Figure:
    """An embedded figure: its kind (the template's alt text and caption), title and image."""

    kind: str
    title: str
    uri: str


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


def _short(value: Any, n: int = 12) -> str:
    """A digest, commit or epoch cut to ``n`` characters, "-" when unknown."""
    return "-" if value is None else str(value)[:n]


def _duration(value: Any) -> str:
    if value is None:
        return "-"
    seconds = float(value)
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds:.0f} s"


ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("hdmnet", "resources"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,  # a misspelt name fails instead of printing nothing
    trim_blocks=True,
    lstrip_blocks=True,
)
ENVIRONMENT.globals.update(zip=zip, cells=cells, NOISE=NOISE)
ENVIRONMENT.filters.update(short=_short, duration=_duration)


def render(**context: Any) -> str:
    """The report page with ``context`` (the names the template uses), every value escaped."""
    return ENVIRONMENT.get_template("report.html.j2").render(**context)
