"""The demo's report and terminal table: the same sections in report.md and report.html,
cells that never wrap, legends outside the data, norm histograms over the bulk, a compact
terminal table whose numbers are recomputed here, and no partial output without matplotlib."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from gradtune.finetune.linear import FinetuneConfig
from gradtune.report.figures import (
    bulk_range,
    fig_norm_distributions,
    outside_note,
    plot_group_accuracy,
    plot_norm_distributions,
)
from gradtune.report.summary import compact_table
from gradtune.workflows.demo import DemoConfig, run_demo
from tests.workflows.test_demo import CALLS, toy_build


def _headings(out) -> tuple[list[str], list[str]]:
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    return re.findall(r"^#{1,3} (.+)$", md, flags=re.M), re.findall(r"<h[123]>(.+?)</h[123]>", html)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "report"
    cfg = DemoConfig(benchmarks=["toy-a"], seeds=[0, 1], out=out, cache_dir=out.parent / "cache", progress=False,
                     methods=["erm", "gradtune", "dfr"], method_params={"gradtune": {"finetune": FinetuneConfig(epochs=5)}})
    return out, run_demo(cfg, build=toy_build)


def test_markdown_and_html_carry_the_same_sections(demo):
    out, _ = demo
    md, html = _headings(out)
    assert md == [h.replace("&#x27;", "'") for h in html]
    assert "What GradTune selected" in md and "Figures" in md and len(md) >= 6
    # the first seed's inferred groups, with the rows of each inferred minority
    assert "toy-a: what the ERM model learned (inferred groups, seed 0)" in md
    assert sum(h.startswith("toy-a ") and "inferred minority" in h for h in md) == 2
    page = (out / "report.html").read_text()
    assert "white-space:nowrap" in page.split("td,th{", 1)[1].split("}", 1)[0]  # "88.4 ± 0.6" stays on one line
    assert re.search(r"<td>\d+\.\d ± \d+\.\d</td>", page)


def test_compact_table_numbers_and_width(demo):
    out, res = demo
    df = pd.read_csv(out / "results.csv")
    table, header = res["compact"], res["compact_header"]
    assert "over 2 seeds (0, 1)" in header and list(table.columns) == ["Method", "Group labels", "toy-a"]
    for _, row in table.iterrows():
        d = df[df["method"] == row["Method"]]
        avg, wga = 100 * d["accuracy"].to_numpy(), 100 * d["worst_group_accuracy"].to_numpy()
        assert row["toy-a"] == f"{avg.mean():.1f} / {wga.mean():.1f} ± {wga.std():.1f}"
        # the report's table carries both stds, in the Markdown and the HTML
        cell = f"{avg.mean():.1f} ± {avg.std():.1f} / {wga.mean():.1f} ± {wga.std():.1f}"
        assert f"| {row['Method']} | {row['Group labels']} | {cell} |" in (out / "report.md").read_text()
        assert f"<td>{cell}</td>" in (out / "report.html").read_text()
    assert table.set_index("Method").loc["dfr", "Group labels"] == "validation"


def test_compact_table_for_the_readme_shape_fits_a_terminal():
    rng = np.random.default_rng(0)
    methods = ["erm", "random", "loss-topk", "gradtune", "dfr-xrm", "gradtune-auto", "dfr"]
    benchmarks = ["fmnist-spurious", "fmnist-biased", "reviews", "adult"]
    rows = [{"benchmark": b, "method": m, "seed": s, "group_labels": "val" if m == "dfr" else "none",
             "accuracy": rng.uniform(0.7, 0.95), "worst_group_accuracy": rng.uniform(0.1, 0.9)}
            for b in benchmarks for m in methods for s in range(3) if not (b == "adult" and m == "dfr" and s == 2)]
    table, header = compact_table(pd.DataFrame(rows), methods, benchmarks)
    text = table.to_string(index=False)
    assert max(map(len, text.splitlines())) <= 110 and table.shape == (7, 6)
    assert header.count("seeds") == 1 and "seeds" not in text
    assert table.set_index("Method").loc["dfr", "adult"].endswith("(n=2)")


def test_norm_histogram_range_is_the_bulk_and_says_what_it_leaves_out():
    rng = np.random.default_rng(1)
    # a few exact zeros and float-underflow norms, then the bulk over many decades
    norms = np.concatenate([np.zeros(5), np.full(5, 1e-38), 10 ** rng.uniform(-20, 1, 990)])
    lo, hi = bulk_range(norms)
    pos = norms[norms > 0]
    assert lo == pytest.approx(np.quantile(pos, 0.01)) and hi == pytest.approx(np.quantile(pos, 0.995))
    assert 1e-20 < lo < 1e-19 and 1 < hi < 10  # the bulk sets the axis, not the underflow
    note = outside_note(norms, lo, hi)
    assert note == (f"not drawn: {int((norms < lo).sum())} norms below {lo:.1e} (incl. 5 zeros) and "
                    f"{int((norms > hi).sum())} above {hi:.1e}, of 1000")
    assert int((norms < lo).sum()) >= 10


def _captured_figures(monkeypatch):
    import matplotlib.pyplot as plt

    figs = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    return figs


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_legends_sit_outside_the_data_and_the_text(tmp_path, monkeypatch):
    figs = _captured_figures(monkeypatch)
    acc = {m: [[0.9, 0.8, 0.7, 0.95]] * 3 for m in ("erm", "gradtune", "gradtune-auto")}
    plot_group_accuracy(acc, ["a", "b", "c", "d"], "t", tmp_path / "acc.png")
    rng = np.random.default_rng(0)
    per_seed = [{"benchmark": b, "seed": s, "norms": (10 ** rng.uniform(-20, 1, 200)).tolist(),
                 "groups": rng.integers(0, 4, 200).tolist(), "group_names": ["a,x", "a,y", "b,x", "b,y"]}
                for b in ("one", "two", "three") for s in range(2)]
    plot_norm_distributions(per_seed[:2], ["a", "b", "c", "d"], "t", tmp_path / "norms.png")
    fig_norm_distributions(per_seed, tmp_path / "fig2.png")
    checked = 0
    for fig in figs:
        renderer = fig.canvas.get_renderer()
        texts = [t for ax in fig.axes for t in (ax.title, ax.xaxis.label, ax.yaxis.label) if t.get_text()]
        texts += [t for ax in fig.axes for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
        for ax in fig.axes:
            leg = ax.get_legend()
            if leg is None:
                continue
            box = leg.get_window_extent(renderer)
            assert not any(_overlaps(box, other.get_window_extent(renderer)) for other in fig.axes)
            assert not any(_overlaps(box, t.get_window_extent(renderer)) for t in texts)
            checked += 1
    assert checked == 5


def test_no_partial_outputs_without_matplotlib(tmp_path, hide_matplotlib):
    from gradtune._optional import MissingDependencyError

    CALLS.clear()
    cfg = DemoConfig(benchmarks=["toy-a"], seeds=[0], out=tmp_path / "r", cache_dir=tmp_path / "c", progress=False,
                     methods=["erm"])
    with pytest.raises(MissingDependencyError, match="matplotlib"):
        run_demo(cfg, build=toy_build)
    assert CALLS == [] and not (tmp_path / "r").exists()  # nothing computed, nothing written


BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome", "chrome-headless-shell")
                if __import__("shutil").which(b)), None)


@pytest.mark.skipif(BROWSER is None, reason="needs a headless Chromium (apt-get install chromium)")
def test_screenshot_script_finds_no_wrapped_cell(demo, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import matplotlib.image as mpimg

    out, _ = demo
    script = Path(__file__).resolve().parents[2] / "scripts" / "report_screenshots.py"
    res = subprocess.run([sys.executable, str(script), str(out / "report.html"), "--out", str(tmp_path),
                          "--width", "1000", "--height", "3000"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    cells = int(re.search(r"(\d+) '±' cells, 0 wrapped", res.stdout).group(1))
    page = (out / "report.html").read_text()
    assert cells == len(re.findall(r"<td>[^<]*±[^<]*</td>", page)) > 0
    assert mpimg.imread(tmp_path / "report-report.png").shape[:2] == (3000, 1000)
