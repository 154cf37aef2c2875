"""The paper's tables (Table 1, 4-7; Figures 2-5) from a frame of stored runs.

Everything here works on a "runs frame": one row per stored run, built from store
records by :func:`runs_frame`, with the flattened hyperparameters as ``p:<key>``
columns. Numbers are aggregated over seeds as mean and population standard deviation
(ddof=0), in percent, by :func:`aggregate`, the only place that does it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from gradtune.report.summary import GROUP_LABEL_MARKS
from gradtune.results.records import flatten_params

__all__ = ["PaperTable", "runs_frame", "aggregate", "cell", "table1", "sweep_table", "sweep_groups", "topk_table", "size_table", "group_table", "norm_table", "worst_group_summary", "SAMPLER_ROWS", "RESET_ROWS", "PARAM_PREFIX"]

PARAM_PREFIX = "p:"

#: Row names of the sweep tables (the paper's wording).
SAMPLER_ROWS = {"uniform": "Class imbalance", "class_balanced": "Class balance", "weighted": "Weighted sampler"}
RESET_ROWS = {True: "Retraining", False: "Finetuning"}


@dataclass
class PaperTable:
    """A table of the report.

    key : str, e.g. 'table1'; title : str; display : DataFrame of formatted strings;
    numbers : long DataFrame (item, row, benchmark, metric, mean, std, n) in percent
    (gradient norms for fig4); notes : lines printed under the table.
    """

    key: str
    title: str
    display: pd.DataFrame
    numbers: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def runs_frame(records: Sequence[dict]) -> pd.DataFrame:
    """One row per stored run (status 'done' with test metrics): metrics (fractions),
    per-group test accuracy lists, effective set size / k, and ``p:`` parameter columns."""
    rows = []
    for r in records:
        ev = (r.get("evaluation") or {}).get("test")
        if ev is None or r.get("status", "done") != "done":
            continue
        diag = r.get("diagnostics") or {}
        row = {
            "run_id": r.get("run_id"), "benchmark": r["benchmark"], "seed": int(r["seed"]), "method": r["method"],
            "label": r.get("label") or r["method"], "group_labels": r.get("group_labels"),
            "accuracy": ev.get("accuracy"), "worst_group_accuracy": ev.get("worst_group_accuracy"),
            "mean_group_accuracy": ev.get("mean_group_accuracy"), "weighted_accuracy": ev.get("weighted_accuracy"),
            "worst_class_accuracy": ev.get("worst_class_accuracy"), "worst_group": ev.get("worst_group"),
            "group_accuracy": ev.get("group_accuracy"), "group_count": ev.get("group_count"),
            "group_names": r.get("group_names"), "fit_seconds": r.get("fit_seconds"),
            "effective_size": diag.get("size"), "effective_top_k": diag.get("top_k"),
            "heldout_size": diag.get("heldout_size"), "bundle_fingerprint": r.get("bundle_fingerprint"),
            "code_version": r.get("code_version"), "git_commit": r.get("git_commit"),
        }
        for k, v in flatten_params(r.get("params") or {}).items():
            row[PARAM_PREFIX + k] = v
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in df.columns:  # keep ints as ints (a column with gaps would turn them into floats)
        if c.startswith(PARAM_PREFIX) or c in ("effective_size", "effective_top_k", "heldout_size", "worst_group"):
            df[c] = pd.Series([r.get(c) for r in rows], index=df.index, dtype=object)
    return df


def aggregate(values: Sequence[float | None], scale: float = 100.0) -> tuple[float, float, int]:
    """(mean, population std, n) of the non-missing values, times ``scale``; NaNs when empty."""
    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and np.isnan(x))], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(scale * v.mean()), float(scale * v.std()), int(v.size)


def cell(mean: float, std: float, n: int, *, digits: int = 1) -> str:
    """'mean ± std' (n >= 2), 'mean' (n == 1) or '-' (n == 0)."""
    if n == 0 or np.isnan(mean):
        return "-"
    if n == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


_METRICS = (("Avg", "accuracy"), ("WGA", "worst_group_accuracy"))


def _group_name(names: Sequence[str] | None, g: int) -> str:
    return names[g] if names and 0 <= g < len(names) else f"group {g}"


def _fill_metric_cells(row: dict[str, Any], nums: list[dict], runs: pd.DataFrame, benchmarks: Sequence[str],
                       key: str, name: str) -> None:
    """Add the 'mean ± std' cell of every (benchmark, metric) to ``row`` and its numbers to ``nums``."""
    for b in benchmarks:
        cb = runs[runs["benchmark"] == b]
        for short, col in _METRICS:
            m, s, n = aggregate(cb[col].tolist())
            row[f"{b} {short}"] = cell(m, s, n)
            nums.append({"item": key, "row": name, "benchmark": b, "metric": short, "mean": m, "std": s, "n": n})


def table1(frame: pd.DataFrame, labels: Sequence[str], benchmarks: Sequence[str], *, key: str = "table1",
           title: str = "Table 1: test accuracy (%) of every method, mean ± std over seeds") -> PaperTable:
    """Methods (rows, in ``labels`` order) x benchmarks (Avg, WGA), with group-label columns."""
    rows: list[dict[str, Any]] = []
    nums: list[dict[str, Any]] = []
    for lab in labels:
        sub = frame[frame["label"] == lab]
        if sub.empty:
            continue
        tr, va = GROUP_LABEL_MARKS.get(sub["group_labels"].iloc[0], ("?", "?"))
        row: dict[str, Any] = {"Method": lab, "Group labels (train)": tr, "Group labels (val)": va}
        _fill_metric_cells(row, nums, sub, benchmarks, key, lab)
        rows.append(row)
    return PaperTable(key, title, pd.DataFrame(rows), pd.DataFrame(nums))


def _pvalue(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and np.isnan(v):
        return None
    return json.dumps(v) if isinstance(v, (dict, list, tuple)) else v


def sweep_groups(frame: pd.DataFrame, method: str, keys: Sequence[str]) -> list[tuple[tuple, str, pd.DataFrame]]:
    """Runs of ``method`` grouped by the values of ``keys`` (and, if other parameters vary
    within a benchmark, by those too, named in the row's suffix).

    Returns a list of (key values + context, row suffix, runs of every benchmark), ordered
    by the key values (numbers before strings).
    """
    sub = frame[frame["method"] == method]
    key_cols = [PARAM_PREFIX + k for k in keys]
    if sub.empty or any(c not in sub.columns for c in key_cols):
        return []
    pcols = [c for c in sub.columns if c.startswith(PARAM_PREFIX)]
    out: dict[tuple, list[int]] = {}
    for _, bsub in sub.groupby("benchmark", sort=False):
        values = {c: [_pvalue(v) for v in bsub[c].tolist()] for c in pcols}
        varying = [c for c in pcols if c not in key_cols and len({json.dumps(v, default=str) for v in values[c]}) > 1]
        for i, idx in enumerate(bsub.index):
            kv = tuple(values[c][i] for c in key_cols)
            ctx = tuple((c[len(PARAM_PREFIX):], values[c][i]) for c in varying)
            out.setdefault((kv, ctx), []).append(idx)
    groups = []
    for (kv, ctx), idxs in out.items():
        suffix = ", ".join(f"{k}={v}" for k, v in ctx)
        groups.append((kv + tuple(str(x) for x in ctx), suffix, sub.loc[idxs]))

    def order(g: tuple) -> tuple:
        return tuple((0, x, "") if isinstance(x, (int, float)) and not isinstance(x, bool) else (1, 0, str(x))
                     for x in g[0])

    groups.sort(key=order)
    return groups


def _baseline_row(frame: pd.DataFrame, baseline: str, benchmarks: Sequence[str], key: str, name: str,
                  nums: list[dict]) -> dict[str, Any] | None:
    sub = frame[frame["method"] == baseline]
    if sub.empty:
        return None
    row: dict[str, Any] = {"Method": name}
    _fill_metric_cells(row, nums, sub, benchmarks, key, name)
    return row


def sweep_table(frame: pd.DataFrame, *, key: str, title: str, method: str, param: str,
                row_names: dict[Any, str], benchmarks: Sequence[str], baseline: str | None = "erm",
                order: Sequence[Any] | None = None) -> PaperTable | None:
    """The baseline row, then one row per value of ``param`` of ``method`` (Tables 4 and 5)."""
    groups = sweep_groups(frame, method, [param])
    if not groups:
        return None
    nums: list[dict] = []
    rows = []
    if baseline:
        b_row = _baseline_row(frame, baseline, benchmarks, key, "ERM" if baseline == "erm" else baseline, nums)
        if b_row:
            rows.append(b_row)
    if order is not None:
        rank = {v: i for i, v in enumerate(order)}
        groups.sort(key=lambda g: rank.get(g[0][0], len(rank)))
    for kv, suffix, runs in groups:
        name = row_names.get(kv[0], f"{param}={kv[0]}") + (f" [{suffix}]" if suffix else "")
        row: dict[str, Any] = {"Method": name}
        _fill_metric_cells(row, nums, runs, benchmarks, key, name)
        rows.append(row)
    return PaperTable(key, title, pd.DataFrame(rows), pd.DataFrame(nums))


def worst_group_summary(runs: pd.DataFrame) -> tuple[str, int, int]:
    """(name of the group with the lowest mean test accuracy over seeds, seeds where it was
    the worst group, seeds)."""
    accs = [[np.nan if a is None else a for a in ga] for ga in runs["group_accuracy"] if ga is not None]
    if not accs:
        return "-", 0, 0
    width = max(len(a) for a in accs)
    mat = np.full((len(accs), width), np.nan)
    for i, a in enumerate(accs):
        mat[i, :len(a)] = a
    with np.errstate(all="ignore"):
        mean = np.nanmean(mat, axis=0)
    g = int(np.nanargmin(mean))
    names = next((n for n in runs["group_names"] if n), None)
    hits = int(sum(1 for w in runs["worst_group"] if w is not None and int(w) == g))
    return _group_name(names, g), hits, len(accs)


def _effective_note(runs: pd.DataFrame, b: str, requested: dict[str, Any]) -> str | None:
    """A note when GradTune's effective (M', k) differ from the requested ones (small held-out sets)."""
    eff = runs[["effective_size", "effective_top_k"]].dropna().drop_duplicates()
    if eff.empty:
        return None
    pairs = sorted({(int(s), int(k)) for s, k in eff.itertuples(index=False)})
    req = (requested.get("size"), requested.get("top_k"))
    if pairs == [req]:
        return None
    shown = "; ".join(f"M'={s}, k={k}" for s, k in pairs)
    return f"{b}: requested M'={req[0]}, k={req[1]}; used {shown} (held-out half smaller than M')"


def _overlap_note(runs: pd.DataFrame, b: str) -> str | None:
    """A note when the fine-tuning set is most of the held-out half, so k can barely matter."""
    sizes = runs[["effective_size", "heldout_size"]].dropna().drop_duplicates()
    if len(sizes) != 1:
        return None
    size, n = (int(x) for x in sizes.iloc[0])
    if size >= n:
        return (f"{b}: the fine-tuning set is the whole held-out half ({n} rows), so every k selects the same rows "
                "(k only changes the order the set is built in); differences between rows there are not an effect of k")
    if size >= 0.8 * n:
        return (f"{b}: the fine-tuning set holds {size} of the {n} held-out rows ({100 * size / n:.0f}%), so the sets "
                "for different k overlap heavily")
    return None


def topk_table(frame: pd.DataFrame, *, method: str, benchmarks: Sequence[str], key: str = "table6",
               title: str = "Table 6: GradTune with different top-k, test accuracy (%) and the worst group",
               ) -> PaperTable | None:
    """Rows: k values; per benchmark Avg, WGA and the worst group (mean over seeds)."""
    groups = sweep_groups(frame, method, ["top_k"])
    if not groups:
        return None
    rows, nums, notes = [], [], []
    for kv, suffix, runs in groups:
        name = f"{kv[0]}" + (f" [{suffix}]" if suffix else "")
        row: dict[str, Any] = {"Top-k": name}
        size = runs[PARAM_PREFIX + "size"].iloc[0] if PARAM_PREFIX + "size" in runs else None
        for b in benchmarks:
            cb = runs[runs["benchmark"] == b]
            for short, col in _METRICS:
                m, s, n = aggregate(cb[col].tolist())
                row[f"{b} {short}"] = cell(m, s, n)
                nums.append({"item": key, "row": name, "benchmark": b, "metric": short, "mean": m, "std": s, "n": n})
            wg, hits, n = worst_group_summary(cb) if not cb.empty else ("-", 0, 0)
            row[f"{b} Worst group"] = f"{wg} ({hits}/{n} seeds)" if n else "-"
            note = _effective_note(cb, b, {"size": size, "top_k": kv[0]}) if not cb.empty else None
            if note:
                notes.append(note)
        rows.append(row)
    sub = frame[frame["method"] == method]
    for b in benchmarks:
        note = _overlap_note(sub[sub["benchmark"] == b], b)
        if note:
            notes.append(note)
    return PaperTable(key, title, pd.DataFrame(rows), pd.DataFrame(nums), notes)


def size_table(frame: pd.DataFrame, *, method: str, benchmarks: Sequence[str], key: str = "fig3",
               title: str = "Figure 3 data: worst-group accuracy (%) vs fine-tuning set size M'",
               ) -> PaperTable | None:
    """Rows: (M', k) settings ordered by M'; per benchmark Avg and WGA."""
    groups = sweep_groups(frame, method, ["size", "top_k"])
    if not groups:
        return None
    rows, nums, notes = [], [], []
    for kv, suffix, runs in groups:
        name = f"M'={kv[0]}, k={kv[1]}" + (f" [{suffix}]" if suffix else "")
        row: dict[str, Any] = {"Setting": name}
        for b in benchmarks:
            cb = runs[runs["benchmark"] == b]
            for short, col in _METRICS:
                m, s, n = aggregate(cb[col].tolist())
                row[f"{b} {short}"] = cell(m, s, n)
                nums.append({"item": key, "row": name, "benchmark": b, "metric": short, "mean": m, "std": s, "n": n,
                             "x": kv[0]})
            note = _effective_note(cb, b, {"size": kv[0], "top_k": kv[1]}) if not cb.empty else None
            if note:
                notes.append(note)
        rows.append(row)
    return PaperTable(key, title, pd.DataFrame(rows), pd.DataFrame(nums), notes)


def group_table(frame: pd.DataFrame, *, before: pd.DataFrame, after: pd.DataFrame, benchmarks: Sequence[str],
                before_name: str = "ERM", after_name: str = "ERM after GradTune", key: str = "table7",
                title: str = "Table 7: per-group test accuracy (%) before and after GradTune") -> PaperTable | None:
    """Per benchmark and group: mean ± std over seeds of the two methods' group accuracies."""
    rows, nums = [], []
    for b in benchmarks:
        bb, ba = before[before["benchmark"] == b], after[after["benchmark"] == b]
        if bb.empty and ba.empty:
            continue
        any_runs = bb if not bb.empty else ba
        names = next((n for n in any_runs["group_names"] if n), None)
        counts = next((c for c in any_runs["group_count"] if c), None)
        width = max(len(ga) for ga in any_runs["group_accuracy"] if ga is not None)
        for g in range(width):
            gname = _group_name(names, g)
            row: dict[str, Any] = {"Dataset": b, "Group": gname, "Test n": counts[g] if counts else ""}
            for name, runs in ((before_name, bb), (after_name, ba)):
                vals = [ga[g] if ga is not None and g < len(ga) else None for ga in runs["group_accuracy"]]
                m, s, n = aggregate(vals)
                row[name] = cell(m, s, n)
                nums.append({"item": key, "row": name, "benchmark": b, "metric": f"group:{gname}", "mean": m,
                             "std": s, "n": n})
            rows.append(row)
    if not rows:
        return None
    return PaperTable(key, title, pd.DataFrame(rows), pd.DataFrame(nums))


def norm_table(entries: Sequence[dict], *, key: str = "fig4",
               title: str = "Figure 4 data: mean held-out gradient norm per group (ERM head), mean ± std over seeds",
               ) -> PaperTable | None:
    """Per benchmark and group: the per-seed mean norm, aggregated over seeds (no scaling)."""
    rows, nums = [], []
    by_b: dict[str, list[dict]] = defaultdict(list)
    for e in entries:
        if e.get("groups") is not None:
            by_b[e["benchmark"]].append(e)
    for b, es in by_b.items():
        names = next((e["group_names"] for e in es if e.get("group_names")), None)
        n_groups = max(max(e["groups"]) for e in es) + 1
        for g in range(n_groups):
            per_seed, sizes = [], []
            for e in es:
                norms, groups = np.asarray(e["norms"], dtype=float), np.asarray(e["groups"])
                sel = norms[groups == g]
                sizes.append(int(sel.size))
                per_seed.append(float(sel.mean()) if sel.size else None)
            m, s, n = aggregate(per_seed, scale=1.0)
            gname = _group_name(names, g)
            rows.append({"Dataset": b, "Group": gname, "Held-out n (per seed)": "/".join(map(str, sizes)),
                         "Mean gradient norm": cell(m, s, n, digits=3)})
            nums.append({"item": key, "row": gname, "benchmark": b, "metric": "grad_norm", "mean": m, "std": s, "n": n})
    if not rows:
        return None
    return PaperTable(key, title, pd.DataFrame(rows), pd.DataFrame(nums))
