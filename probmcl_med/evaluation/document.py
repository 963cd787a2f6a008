"""A report as a list of blocks, rendered to markdown (images by relative path) and to self-contained HTML.

One description, two renderings: the report's content is built once (:mod:`probmcl_med.evaluation.report`) and
cannot drift between ``report.md`` and ``report.html``. Inline text uses two markdown spans, ``**bold**`` and
```code```; the HTML renderer escapes everything else.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field

_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str
    css: str = ""  # HTML class: "note", "finding", "warning"


@dataclass
class Bullets:
    items: list[str]
    css: str = ""


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    row_css: list[str] = field(default_factory=list)  # per row, an HTML class ("floor", "over"), or ""
    bold_css: tuple[str, ...] = ("floor",)  # rows whose cells markdown shows in bold
    css: str = ""  # HTML class of the table


@dataclass
class Figure:
    filename: str
    title: str
    data: bytes
    caption: str = ""


@dataclass
class Thumbnail:
    filename: str
    data: bytes
    caption: str


@dataclass
class Gallery:
    """A row of thumbnails under a label (one class's misses, or its false alarms)."""

    label: str
    thumbnails: list[Thumbnail]
    empty: str = "none"


Block = Heading | Paragraph | Bullets | Table | Figure | Gallery


def inline_html(text: str) -> str:
    """Escape ``text`` and turn its ``**bold**`` and ```code``` spans into <b> and <code>."""
    escaped = html.escape(text)
    return _CODE.sub(r"<code>\1</code>", _BOLD.sub(r"<b>\1</b>", escaped))


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(title: str, blocks: list[Block]) -> str:
    """The report as markdown; figures and thumbnails are linked by file name (they live beside report.md)."""
    out = [f"# {title}", ""]
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Paragraph):
            out += [b.text, ""]
        elif isinstance(b, Bullets):
            out += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            out += ["| " + " | ".join(_md_cell(h) for h in b.header) + " |", "|" + "---|" * len(b.header)]
            for i, row in enumerate(b.rows):
                bold = i < len(b.row_css) and any(mark in b.bold_css for mark in b.row_css[i].split())
                cells = [_md_cell(c) for c in row]
                out.append("| " + " | ".join(f"**{c}**" if bold and c else c for c in cells) + " |")
            out.append("")
        elif isinstance(b, Figure):
            out += [f"![{b.title}]({b.filename})", ""] + ([b.caption, ""] if b.caption else [])
        elif isinstance(b, Gallery):
            out.append(f"**{b.label}:** " + ("" if b.thumbnails else b.empty))
            out += [f"![{t.caption}]({t.filename}) {t.caption}  " for t in b.thumbnails]
            out.append("")
    return "\n".join(out)


def _png(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def to_html(title: str, blocks: list[Block], css: str) -> str:
    """The report as one self-contained HTML page (every image embedded as a base64 data URI)."""
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>',
        f"<style>{css}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    for b in blocks:
        if isinstance(b, Heading):
            anchor = re.sub(r"[^a-z0-9]+", "-", b.text.lower()).strip("-")
            out.append(f'<h{b.level} id="{anchor}">{e(b.text)}</h{b.level}>')
        elif isinstance(b, Paragraph):
            out.append(f'<p class="{b.css}">{inline_html(b.text)}</p>' if b.css else f"<p>{inline_html(b.text)}</p>")
        elif isinstance(b, Bullets):
            out.append(f'<ul class="{b.css}">' if b.css else "<ul>")
            out += [f"<li>{inline_html(item)}</li>" for item in b.items]
            out.append("</ul>")
        elif isinstance(b, Table):
            out.append(f'<table class="{b.css}">' if b.css else "<table>")
            if any(b.header):  # a table of key-value lines has no header row
                out.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in b.header) + "</tr>")
            for i, row in enumerate(b.rows):
                css = b.row_css[i] if i < len(b.row_css) else ""
                cells = "".join(f"<td>{e(c)}</td>" for c in row)
                out.append((f'<tr class="{css}">' if css else "<tr>") + cells + "</tr>")
            out.append("</table>")
        elif isinstance(b, Figure):
            out.append(f'<figure><img alt="{e(b.title)}" src="{_png(b.data)}">')
            caption = inline_html(b.caption) + " " if b.caption else ""
            out.append(f'<figcaption>{caption}(also saved as <a href="{e(b.filename)}">{e(b.filename)}</a>)')
            out.append("</figcaption></figure>")
        elif isinstance(b, Gallery):
            out.append(f'<div class="gallery"><div class="label">{inline_html(b.label)}</div>')
            if not b.thumbnails:
                out.append(f'<div class="empty">{e(b.empty)}</div>')
            for t in b.thumbnails:
                out.append(f'<figure class="thumb"><img alt="{e(t.caption)}" src="{_png(t.data)}">')
                out.append(f"<figcaption>{e(t.caption)}</figcaption></figure>")
            out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out)
