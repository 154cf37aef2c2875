"""The shared report renderer: Markdown and HTML from the same blocks, data escaped in both."""

from __future__ import annotations

import re

import pandas as pd

from gradtune.report.document import Document, GalleryItem


def test_same_headings_and_escaped_data(tmp_path):
    doc = Document("t <1>")
    doc.h(2, "A & B")
    doc.p("text with <b>markup</b>")
    doc.table(pd.DataFrame({"x": ["1 | 2", "<script>alert(1)</script>"], "y": ["88.4 ± 0.6", "-"]}))
    doc.h(3, "sub")
    doc.gallery([GalleryItem("row 3 · score 0.90", text="a <img src=x onerror=alert(1)> review"),
                 GalleryItem("row 4 · score 0.80", png=b"\x89PNG")])
    paths = doc.write(tmp_path, stem="r")
    md, html = paths["markdown"].read_text(), paths["html"].read_text()
    assert re.findall(r"^#+ (.+)$", md, flags=re.M) == ["t <1>", "A & B", "sub"]
    assert doc.headings(3) == ["A & B", "sub"] and doc.headings() == ["A & B"]
    assert re.findall(r"<h\d>(.+?)</h\d>", html) == ["t &lt;1&gt;", "A &amp; B", "sub"]
    assert "<script>" not in html and "<img src=x" not in html and "&lt;script&gt;" in html
    assert "| 1 \\| 2 |" in md  # a pipe in a cell does not split the Markdown row
    assert "- row 3 · score 0.90: a &lt;img src=x onerror=alert(1)&gt; review" in md
    assert html.count("data:image/png;base64,") == 1 and "class='snippet'" in html
