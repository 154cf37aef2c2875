"""Per-method summary tables from stored run records (never from live objects).

A record is a run as the results store returns it
(:meth:`gradtune.results.store.ResultStore.records`; the same dict
:func:`gradtune.experiments.runner.run_record` makes). :func:`records_frame` puts the
records of one split in a frame; :func:`summary_table` gives mean ± population standard
deviation (ddof=0) over seeds, in percent, per method and benchmark; :func:`per_group_table`
the per-group accuracies; :func:`markdown_table` and :func:`comparison_notes` render them.
The paper's tables are in :mod:`gradtune.report.paper_tables`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import pandas as pd

from gradtune.report.document import markdown_table

__all__ = ["GROUP_LABEL_MARKS", "records_frame", "summary_table", "format_pm", "markdown_table", "comparison_notes",
           "per_group_table", "compact_table"]

GROUP_LABEL_MARKS = {"none": ("✗", "✗"), "val": ("✗", "✓"), "train+val": ("✓", "✓")}


def records_frame(records: Sequence[dict], split: str = "test") -> pd.DataFrame:
    """One row per run with the headline metrics of ``split`` (fractions)."""
    rows = []
    for r in records:
        ev = r["evaluation"].get(split)
        if ev is None:
            continue
        rows.append({
            "benchmark": r["benchmark"], "method": r["label"], "seed": r["seed"],
            "group_labels": r["group_labels"], "accuracy": ev["accuracy"],
            "worst_group_accuracy": ev["worst_group_accuracy"],
            "mean_group_accuracy": ev["mean_group_accuracy"],
            "weighted_accuracy": ev["weighted_accuracy"],
            "worst_class_accuracy": ev["worst_class_accuracy"],
            "worst_group": ev["worst_group"], "fit_seconds": r.get("fit_seconds"),
        })
    return pd.DataFrame(rows)


def format_pm(values: Sequence[float]) -> str:
    """'mean ± std' in percent, one decimal; '-' if empty."""
    v = np.asarray([x for x in values if x is not None and not np.isnan(x)], dtype=float)
    if v.size == 0:
        return "-"
    if v.size == 1:
        return f"{100 * v[0]:.1f}"
    return f"{100 * v.mean():.1f} ± {100 * v.std():.1f}"


def summary_table(frame: pd.DataFrame, methods: Sequence[str] | None = None,
                  benchmarks: Sequence[str] | None = None,
                  metrics: Sequence[tuple[str, str]] = (("Avg", "accuracy"), ("WGA", "worst_group_accuracy")),
                  ) -> pd.DataFrame:
    """Methods x (benchmark, metric) table of 'mean ± std' strings, with group-label columns."""
    if frame.empty:
        return pd.DataFrame()
    methods = list(methods or dict.fromkeys(frame["method"]))
    benchmarks = list(benchmarks or dict.fromkeys(frame["benchmark"]))
    out = []
    for m in methods:
        sub = frame[frame["method"] == m]
        if sub.empty:
            continue
        use = sub["group_labels"].iloc[0]
        tr, va = GROUP_LABEL_MARKS.get(use, ("?", "?"))
        row: dict[str, str | int] = {"Method": m, "Group labels (train)": tr, "Group labels (val)": va}
        for b in benchmarks:
            cell = sub[sub["benchmark"] == b]
            for short, col in metrics:
                row[f"{b} {short}"] = format_pm(cell[col].tolist()) if not cell.empty else "-"
            row[f"{b} seeds"] = len(cell)
        out.append(row)
    return pd.DataFrame(out)


GROUP_LABEL_WORDS = {"none": "none", "val": "validation", "train+val": "train+val"}


def compact_table(frame: pd.DataFrame, methods: Sequence[str] | None = None,
                  benchmarks: Sequence[str] | None = None, *, avg_std: bool = False) -> tuple[pd.DataFrame, str]:
    """One row per method, one column per benchmark holding 'Avg / WGA ± std' (means over
    seeds in percent; the std, ddof=0, is WGA's), and a header naming the seeds once. A
    cell over fewer seeds than the rest says how many. ``avg_std``: 'Avg ± std / WGA ± std'
    (the report's table); without it, the terminal's.

    Returns
    -------
    table : DataFrame with 'Method', 'Group labels' and one column per benchmark
    header : str, two lines (what the cells are, over which seeds; the abbreviations)
    """
    if frame.empty:
        return pd.DataFrame(), "no results"
    methods = list(methods or dict.fromkeys(frame["method"]))
    benchmarks = list(benchmarks or dict.fromkeys(frame["benchmark"]))
    seeds = sorted(set(frame["seed"]))
    out = []
    for m in methods:
        sub = frame[frame["method"] == m]
        if sub.empty:
            continue
        use = sub["group_labels"].iloc[0]
        row = {"Method": m, "Group labels": GROUP_LABEL_WORDS.get(use, use)}
        for b in benchmarks:
            cell = sub[sub["benchmark"] == b]
            if cell.empty:
                row[b] = "-"
                continue
            avg, wga = 100 * cell["accuracy"].to_numpy(float), 100 * cell["worst_group_accuracy"].to_numpy(float)
            sd = len(cell) > 1
            text = (f"{avg.mean():.1f}" + (f" ± {avg.std():.1f}" if sd and avg_std else "")
                    + f" / {wga.mean():.1f}" + (f" ± {wga.std():.1f}" if sd else ""))
            row[b] = text + (f" (n={len(cell)})" if cell["seed"].nunique() < len(seeds) else "")
        out.append(row)
    header = (f"Test accuracy (%), Avg / WGA ± std{'' if avg_std else ' of WGA'} over {len(seeds)} seed{'s' * (len(seeds) != 1)} "
              f"({', '.join(map(str, seeds))})\nAvg = plain accuracy, WGA = worst-group accuracy")
    return pd.DataFrame(out), header


def comparison_notes(frame: pd.DataFrame, method: str = "gradtune", baseline: str = "erm") -> list[str]:
    """One honest sentence per benchmark: does ``method`` beat ``baseline`` on mean WGA?"""
    notes = []
    for b in dict.fromkeys(frame["benchmark"]):
        f = frame[frame["benchmark"] == b]
        a = f[f["method"] == method]
        e = f[f["method"] == baseline]
        if a.empty or e.empty:
            continue
        dw = 100 * (a["worst_group_accuracy"].mean() - e["worst_group_accuracy"].mean())
        da = 100 * (a["accuracy"].mean() - e["accuracy"].mean())
        sd = 100 * np.sqrt((a["worst_group_accuracy"].var(ddof=0) + e["worst_group_accuracy"].var(ddof=0)) / 2)
        if dw > max(1.0, sd):
            verdict = f"improves worst-group accuracy over {baseline} by {dw:.1f} points"
        elif dw < -max(1.0, sd):
            verdict = f"LOWERS worst-group accuracy versus {baseline} by {-dw:.1f} points"
        else:
            verdict = f"does not clearly change worst-group accuracy versus {baseline} ({dw:+.1f} points, seed std {sd:.1f})"
        notes.append(f"{b}: {method} {verdict}; average accuracy {da:+.1f} points.")
    return notes


def per_group_table(records: Sequence[dict], benchmark: str, methods: Sequence[str]) -> pd.DataFrame:
    """Per-group test accuracy (mean ± std over seeds) for ``methods`` on one benchmark (paper Table 7)."""
    acc: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    names: list[str] | None = None
    counts: list[int] | None = None
    for r in records:
        if r["benchmark"] != benchmark or r["label"] not in methods or "test" not in r["evaluation"]:
            continue
        ev = r["evaluation"]["test"]
        names = names or r.get("group_names")
        counts = counts or ev["group_count"]
        for g, a in enumerate(ev["group_accuracy"]):
            if a is not None:
                acc[r["label"]][g].append(a)
    if not acc:
        return pd.DataFrame()
    n_groups = max(max(d) for d in acc.values()) + 1
    rows = []
    for g in range(n_groups):
        row = {"Group": names[g] if names and g < len(names) else f"group {g}",
               "Test n": counts[g] if counts else ""}
        for m in methods:
            row[m] = format_pm(acc[m][g]) if m in acc else "-"
        rows.append(row)
    return pd.DataFrame(rows)
