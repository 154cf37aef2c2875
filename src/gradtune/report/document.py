"""One renderer for every report gradtune writes: blocks rendered to Markdown and to HTML.

The demo's report (:mod:`gradtune.report.demo_report`), ``gradtune report``
(:mod:`gradtune.report.paper_report`) and ``gradtune inspect``
(:mod:`gradtune.report.gallery`) build a :class:`Document` of blocks (headings,
paragraphs, lists, tables, figures, thumbnail galleries) and write it with
:meth:`Document.write`, so the Markdown and the HTML of one report always carry the
same sections in the same order.

The HTML is self-contained: figures and thumbnails are inlined as base64 PNG. Table
cells never wrap (a "88.4 ± 0.6" cell stays on one line); a wide table scrolls
sideways inside its own box instead.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from gradtune._io import atomic_write_text

__all__ = ["Document", "GalleryItem", "STYLE", "markdown_table"]

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.45}"
    ".table-box{overflow-x:auto;margin:.5em 0 1em}"
    "table{border-collapse:collapse;font-size:13px}"
    "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}"
    "th{background:#f3f3f3}td:first-child{text-align:left}"
    "img{max-width:100%}figcaption{font-style:italic;color:#444}code{background:#f5f5f5;padding:0 3px}"
    ".gallery{display:flex;flex-wrap:wrap;gap:8px;margin:.3em 0 1em}"
    ".gallery figure{margin:0;width:var(--thumb);font-size:11px;color:#333}"
    ".gallery img{width:var(--thumb);image-rendering:pixelated;border:1px solid #bbb}"
    ".gallery .snippet{border:1px solid #bbb;padding:4px;min-height:4em;font-size:12px;"
    "background:#fafafa;white-space:normal;overflow-wrap:anywhere}"
)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency); ``_no results_`` when empty."""
    if df.empty:
        return "_no results_"
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(r[c]).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines)


@dataclass
class GalleryItem:
    """One entry of a gallery: a PNG thumbnail or a text snippet, with a caption.

    png : bytes of a PNG image, or None for a text item
    text : the snippet shown when there is no image (a review, the columns of a tabular row)
    caption : one short line under the item (row id, scores)
    """

    caption: str
    png: bytes | None = None
    text: str | None = None


@dataclass
class _Gallery:
    items: list[GalleryItem]
    strip: Path | None  # a PNG of all thumbnails in a row, for the Markdown
    thumb_px: int = 84


@dataclass
class Document:
    """An ordered list of blocks, written as ``report.md`` and ``report.html`` (or other names)."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        if text.strip():
            self.blocks.append(("p", text))

    def ul(self, items: Sequence[str]) -> None:
        if items:
            self.blocks.append(("ul", list(items)))

    def table(self, df: pd.DataFrame) -> None:
        self.blocks.append(("table", df))

    def fig(self, path: Path, caption: str) -> None:
        """A PNG figure; Markdown links it as ``figures/<name>`` (the report's figure folder)."""
        self.blocks.append(("fig", (Path(path), caption)))

    def gallery(self, items: Sequence[GalleryItem], *, strip: Path | None = None, thumb_px: int = 84) -> None:
        """Thumbnails (or snippets) side by side. Markdown shows ``strip`` (a PNG of the
        thumbnails, linked relative to the report) when given, then each caption/snippet."""
        self.blocks.append(("gallery", _Gallery(list(items), strip, thumb_px)))

    def headings(self, max_level: int = 2) -> list[str]:
        """The heading texts up to ``max_level``, in order (both renderings carry exactly these)."""
        return [x[1] for kind, x in self.blocks if kind == "h" and x[0] <= max_level]

    # ------------------------------------------------------------------ rendering
    def markdown(self, *, figure_dir: str = "figures") -> str:
        out: list[str] = [f"# {self.title}", ""]
        for kind, x in self.blocks:
            if kind == "h":
                out += ["#" * x[0] + " " + x[1], ""]
            elif kind == "p":
                out += [x, ""]
            elif kind == "ul":
                out += [f"- {i}" for i in x] + [""]
            elif kind == "table":
                out += [markdown_table(x), ""]
            elif kind == "fig":
                out += [f"![{x[1]}]({figure_dir}/{x[0].name})", "", f"*{x[1]}*", ""]
            elif kind == "gallery":
                if x.strip is not None:
                    out += [f"![thumbnails]({x.strip.parent.name}/{x.strip.name})", ""]
                for item in x.items:
                    text = f": {_one_line(item.text)}" if item.text else ""
                    out.append(f"- {item.caption}{text}")
                out.append("")
        return "\n".join(out)

    def html(self) -> str:
        title = html.escape(self.title)
        parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>",
                 f"<style>{STYLE}</style></head><body>", f"<h1>{title}</h1>"]
        for kind, x in self.blocks:
            if kind == "h":
                parts.append(f"<h{x[0]}>{html.escape(x[1])}</h{x[0]}>")
            elif kind == "p":
                parts.append(f"<p>{html.escape(x)}</p>")
            elif kind == "ul":
                parts.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in x) + "</ul>")
            elif kind == "table":
                parts.append("<div class='table-box'>" + x.to_html(index=False, border=0, escape=True) + "</div>")
            elif kind == "fig":
                parts.append(f"<figure><img src='{_data_uri(x[0].read_bytes())}' alt='{html.escape(x[1])}'>"
                             f"<figcaption>{html.escape(x[1])}</figcaption></figure>")
            elif kind == "gallery":
                parts.append(_gallery_html(x))
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, out_dir: str | Path, stem: str = "report") -> dict[str, Path]:
        """Write ``<stem>.md`` and ``<stem>.html`` atomically; returns {'markdown': ..., 'html': ...}."""
        out_dir = Path(out_dir)
        return {"markdown": atomic_write_text(out_dir / f"{stem}.md", self.markdown()),
                "html": atomic_write_text(out_dir / f"{stem}.html", self.html())}


def _one_line(text: str) -> str:
    """A snippet on one Markdown line; angle brackets escaped so that a data row's HTML is shown, not run."""
    return " ".join(text.split()).replace("<", "&lt;").replace(">", "&gt;")


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _gallery_html(g: _Gallery) -> str:
    width = g.thumb_px if any(i.png for i in g.items) else 260
    out = [f"<div class='gallery' style='--thumb:{width}px'>"]
    for item in g.items:
        cap = html.escape(item.caption)
        if item.png is not None:
            body = f"<img src='{_data_uri(item.png)}' alt='{cap}'>"
        else:
            body = f"<div class='snippet'>{html.escape(item.text or '')}</div>"
        out.append(f"<figure>{body}<figcaption>{cap}</figcaption></figure>")
    out.append("</div>")
    return "".join(out)
