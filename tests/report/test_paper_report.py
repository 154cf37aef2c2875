"""`gradtune report`: every number is recomputed here from the store with numpy and compared
with the written CSV and Markdown; missing runs are named instead of shown."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from gradtune.cli import main
from gradtune.experiments.config import load_config
from gradtune.experiments.runner import run_experiments
from gradtune.report.paper_report import write_paper_report
from gradtune.results.store import ResultStore
from tests.experiments._toy import config_text, write_bundles

EXTRA = {
    "t1": ("", ("table1", "fig2", "fig4", "table7")),
    "k": ("[grid.gradtune]\ntop_k = [4, 16, 32]", ("table6", "fig5")),
    "size": ("[[variants.gradtune]]\nsize = 10\ntop_k = 8\n[[variants.gradtune]]\nsize = 40\ntop_k = 32\n"
             "[[variants.gradtune]]\nsize = 500\ntop_k = 400", ("fig3",)),
    "bal": ('[grid.gradtune]\n"finetune.sampler" = ["class_balanced", "uniform"]', ("table4",)),
    "ret": ('[grid.gradtune]\n"finetune.reset" = [false, true]', ("table5",)),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    bundles = write_bundles(root / "bundles")
    configs = []
    for name, (extra, tables) in EXTRA.items():
        methods = ("erm", "random", "gradtune", "dfr") if name == "t1" else ("erm", "gradtune")
        p = root / f"{name}.toml"
        p.write_text(config_text(bundles, name=name, methods=methods, extra=extra, tables=tables, epochs=8))
        configs.append(load_config(p))
    summary = run_experiments(configs, root / "results")
    assert summary.failed == 0
    res = write_paper_report(root / "results", root / "report")
    return root, res


def _db_runs(db) -> pd.DataFrame:
    conn = sqlite3.connect(db)
    try:
        return pd.read_sql_query("SELECT e.experiment, e.label AS exp_label, r.* FROM experiment_runs e "
                                 "JOIN runs r ON r.run_id = e.run_id WHERE r.status = 'done'", conn)
    finally:
        conn.close()


def _fmt(v: np.ndarray) -> str:
    return f"{100 * v.mean():.1f} ± {100 * v.std():.1f}" if v.size > 1 else f"{100 * v[0]:.1f}"


def _section(md: str, heading: str) -> str:
    start = md.index(heading)
    nxt = md.find("\n## ", start + 1)
    return md[start: nxt if nxt > 0 else None]


def _md_row(section: str, first_cell: str) -> list[str]:
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in\n{section}")


def test_every_item_is_written(world):
    root, res = world
    assert res.shown == ["table1", "fig2", "fig4", "fig3", "table4", "table5", "table6", "fig5", "table7"]
    assert res.missing == {}
    out = root / "report"
    for f in ("report.md", "report.html", "results.csv", "tables.csv", "table1.csv", "table4.csv", "table5.csv",
              "table6.csv", "table7.csv", "fig3.csv", "fig4.csv", "figures/fig2-gradnorm-distributions.png",
              "figures/fig3-set-size.png", "figures/fig4-gradnorm-group-means.png", "figures/fig5-topk.png"):
        assert (out / f).stat().st_size > 0, f
    html = (out / "report.html").read_text()
    assert html.count("src='data:image/png;base64,") == 4 and "src='figures" not in html
    md = (out / "report.md").read_text()
    # the set-size rule is stated, and the runs where it applied are named
    assert "k_eff = round(k * N / M')" in md
    assert "toy-a: requested M'=500, k=400; used M'=80, k=64" in md


def test_table1_numbers_are_the_stores(world):
    root, _ = world
    runs = _db_runs(root / "results" / "results.sqlite")
    runs = runs[runs["experiment"] == "t1"]
    long = pd.read_csv(root / "report" / "tables.csv")
    md = _section((root / "report" / "report.md").read_text(), "## Table 1")
    benchmarks = ["toy-a", "toy-b"]
    checked = 0
    for label, sub in runs.groupby("exp_label"):
        row = _md_row(md, label)
        header = _md_row(md, "Method")
        for b in benchmarks:
            for short, col in (("Avg", "test_accuracy"), ("WGA", "test_worst_group_accuracy")):
                v = sub[sub["benchmark"] == b][col].to_numpy(dtype=float)
                assert v.size == 2
                got = long[(long["item"] == "table1") & (long["row"] == label) & (long["benchmark"] == b)
                           & (long["metric"] == short)].iloc[0]
                assert got["mean"] == pytest.approx(100 * v.mean(), abs=1e-9)
                assert got["std"] == pytest.approx(100 * v.std(), abs=1e-9) and got["n"] == 2
                assert row[header.index(f"{b} {short}")] == _fmt(v)
                checked += 1
    assert checked == 4 * 2 * 2
    dfr = _md_row(md, "dfr")
    assert dfr[1:3] == ["✗", "✓"] and _md_row(md, "gradtune")[1:3] == ["✗", "✗"]


def test_sweep_tables_are_the_stores(world):
    root, _ = world
    runs = _db_runs(root / "results" / "results.sqlite")
    long = pd.read_csv(root / "report" / "tables.csv")
    md = (root / "report" / "report.md").read_text()
    params = runs["params"].map(json.loads)
    # Table 4: rows by the fine-tuning sampler of the GradTune runs of experiment 'bal'
    bal = runs[(runs["experiment"] == "bal") & (runs["method"] == "gradtune")]
    sec = _section(md, "## Table 4")
    for value, name in (("class_balanced", "Class balance"), ("uniform", "Class imbalance")):
        sub = bal[params[bal.index].map(lambda p: p["finetune"]["sampler"]) == value]
        for b in ("toy-a", "toy-b"):
            v = sub[sub["benchmark"] == b]["test_worst_group_accuracy"].to_numpy(dtype=float)
            got = long[(long["item"] == "table4") & (long["row"] == name) & (long["benchmark"] == b)
                       & (long["metric"] == "WGA")].iloc[0]
            assert got["mean"] == pytest.approx(100 * v.mean(), abs=1e-9)
            assert _md_row(sec, name)[_md_row(sec, "Method").index(f"{b} WGA")] == _fmt(v)
    assert _md_row(sec, "ERM")  # the baseline row
    # Table 6: for each k, WGA and the worst group (lowest mean group accuracy over seeds)
    k = runs[(runs["experiment"] == "k") & (runs["method"] == "gradtune")]
    sec = _section(md, "## Table 6")
    header = _md_row(sec, "Top-k")
    for top_k in (4, 16, 32):
        sub = k[params[k.index].map(lambda p: p["top_k"]) == top_k]
        row = _md_row(sec, str(top_k))
        for b in ("toy-a", "toy-b"):
            sb = sub[sub["benchmark"] == b]
            assert row[header.index(f"{b} WGA")] == _fmt(sb["test_worst_group_accuracy"].to_numpy(dtype=float))
            accs = np.array([json.loads(g) for g in sb["test_group_accuracy"]], dtype=float)
            worst = json.loads(sb["group_names"].iloc[0])[int(np.argmin(accs.mean(0)))]
            hits = sum(json.loads(t)["worst_group"] == int(np.argmin(accs.mean(0))) for t in sb["test_metrics"])
            assert row[header.index(f"{b} Worst group")] == f"{worst} ({hits}/2 seeds)"
    # Table 5 rows exist in the paper's order
    sec = _section(md, "## Table 5")
    names = [ln.split("|")[1].strip() for ln in sec.splitlines() if ln.startswith("| ")][1:]
    assert names == ["ERM", "Retraining", "Finetuning"]


def test_group_and_norm_tables_are_the_stores(world):
    root, _ = world
    db = root / "results" / "results.sqlite"
    runs = _db_runs(db)
    long = pd.read_csv(root / "report" / "tables.csv")
    t1 = runs[runs["experiment"] == "t1"]
    for method, name in (("erm", "ERM"), ("gradtune", "ERM after gradtune")):
        sub = t1[(t1["method"] == method) & (t1["benchmark"] == "toy-b")]
        accs = np.array([json.loads(g) for g in sub["test_group_accuracy"]], dtype=float)
        for g, gname in enumerate(json.loads(sub["group_names"].iloc[0])):
            got = long[(long["item"] == "table7") & (long["row"] == name) & (long["benchmark"] == "toy-b")
                       & (long["metric"] == f"group:{gname}")].iloc[0]
            assert got["mean"] == pytest.approx(100 * accs[:, g].mean(), abs=1e-9)
            assert got["std"] == pytest.approx(100 * accs[:, g].std(), abs=1e-9)
    conn = sqlite3.connect(db)
    norms = conn.execute("SELECT benchmark, norms, groups FROM heldout_norms WHERE benchmark='toy-a'").fetchall()
    conn.close()
    per_group = defaultdict(list)
    for _, n, g in norms:
        n, g = np.array(json.loads(n)), np.array(json.loads(g))
        for k in range(4):
            per_group[k].append(n[g == k].mean())
    fig4 = long[(long["item"] == "fig4") & (long["benchmark"] == "toy-a")].reset_index(drop=True)
    assert len(fig4) == 4
    for k in range(4):
        assert fig4.loc[k, "mean"] == pytest.approx(np.mean(per_group[k]), rel=1e-12)
        assert fig4.loc[k, "std"] == pytest.approx(np.std(per_group[k]), rel=1e-9, abs=1e-12)


def test_results_csv_has_every_run(world):
    root, _ = world
    store = ResultStore(root / "results" / "results.sqlite", readonly=True)
    df = pd.read_csv(root / "report" / "results.csv")
    recs = {r["run_id"]: r for r in store.records()}
    assert len(df) == len(recs) and set(df["run_id"]) == set(recs)
    for _, row in df.iterrows():
        assert row["worst_group_accuracy"] == pytest.approx(recs[row["run_id"]]["test_worst_group_accuracy"])


def test_missing_runs_are_named_not_shown(tmp_path, capsys):
    bundles = write_bundles(tmp_path / "bundles")
    p = tmp_path / "t1.toml"
    p.write_text(config_text(bundles, name="t1", seeds=(0,), methods=("erm", "gradtune"), epochs=3,
                             tables=("table1", "fig2", "table7")))
    run_experiments([load_config(p)], tmp_path / "results")
    db = tmp_path / "results" / "results.sqlite"
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE runs SET status='failed', error='boom' WHERE method='gradtune' AND benchmark='toy-b'")
    conn.close()
    res = write_paper_report(db, tmp_path / "report")
    assert res.shown == ["fig2"]
    assert "1 of 4 planned runs are not done: toy-b seed 0 gradtune (failed)" in res.missing["table1"]
    assert "offline-ablation-k" in res.missing["table6"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Not in this report" in md and "Table 1" not in md.split("## Not in this report")[0].split(
        "## Experiments")[1].split("## Figure")[0]
    assert main(["report", str(tmp_path / "results"), "--out", str(tmp_path / "partial"), "--partial"]) == 0
    out = capsys.readouterr().out
    assert "shown: table1, fig2, table7" in out
    md = (tmp_path / "partial" / "report.md").read_text()
    assert re.search(r"## Table 1: .*\(INCOMPLETE\)", md)
    with pytest.raises(FileNotFoundError, match="no results.sqlite"):
        write_paper_report(tmp_path / "bundles", tmp_path / "x")


def test_markdown_and_html_list_the_same_sections(world):
    root, _ = world
    md = (root / "report" / "report.md").read_text()
    page = (root / "report" / "report.html").read_text()
    md_heads = re.findall(r"^##? (.+)$", md, flags=re.M)
    html_heads = [h.replace("&#x27;", "'") for h in re.findall(r"<h[12]>(.+?)</h[12]>", page)]
    assert md_heads == html_heads and len(md_heads) >= 8
    assert "white-space:nowrap" in page.split("td,th{", 1)[1].split("}", 1)[0]


def test_report_without_matplotlib_writes_nothing(world, tmp_path, hide_matplotlib, capsys):
    root, _ = world
    out = tmp_path / "report"
    assert main(["report", str(root / "results"), "--out", str(out)]) == 2
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert not out.exists()  # no partial table1.csv or anything else
