"""The paper's tables and figures from a results store, and nothing else.

:func:`write_paper_report` reads a store written by ``gradtune run`` and writes, into one
folder: ``report.md``, a self-contained ``report.html`` (figures inlined as base64 PNG),
``results.csv`` (one row per finished run, every metric and hyperparameter),
``tables.csv`` (every number of every table: mean, std and n over seeds), one CSV per
table with the displayed cells, and ``figures/*.png``.

Which tables appear is decided by the experiments stored with the runs: each config's
``[report] tables`` says what the experiment is for (Table 1, 4, 5, 6, 7; Fig. 2-5). An
item is shown only when every run its experiments planned is done (``partial=True``
shows what there is, marked incomplete); otherwise the report says what is missing,
including items no stored experiment asked for.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from gradtune._io import atomic_write_text
from gradtune.report.document import Document
from gradtune.report.figures import require_figures
from gradtune.report.paper_items import REPORT_ITEMS, ItemContext
from gradtune.report.paper_tables import PaperTable, runs_frame
from gradtune.results.records import flatten_params

__all__ = ["write_paper_report", "ReportResult", "ITEM_ORDER", "SUGGESTED_CONFIG"]

#: Order of the report's sections: the registry's (:mod:`gradtune.report.paper_items`).
ITEM_ORDER = tuple(REPORT_ITEMS)

#: Packaged configs that produce each item (paper benchmarks / offline benchmarks).
SUGGESTED_CONFIG = {key: item.config for key, item in REPORT_ITEMS.items()}


@dataclass
class ReportResult:
    """What :func:`write_paper_report` wrote: paths, the items shown, and why others are missing."""

    paths: dict[str, Path]
    shown: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    tables: dict[str, PaperTable] = field(default_factory=dict)


def _results_csv(records: Sequence[dict], links: dict[str, list[str]]) -> pd.DataFrame:
    rows = []
    for r in records:
        ev = r.get("evaluation") or {}
        test, sel = ev.get("test") or {}, ev.get("selection") or {}
        names = r.get("group_names") or []
        row: dict[str, Any] = {
            "run_id": r["run_id"], "experiments": ";".join(links.get(r["run_id"], [])), "benchmark": r["benchmark"],
            "seed": r["seed"], "method": r["method"], "label": r["label"], "group_labels": r.get("group_labels"),
        }
        for k in ("accuracy", "worst_group_accuracy", "mean_group_accuracy", "weighted_accuracy",
                  "worst_class_accuracy"):
            row[k] = test.get(k)
        row["worst_group"] = (names[test["worst_group"]] if test.get("worst_group") is not None
                              and test["worst_group"] < len(names) else test.get("worst_group"))
        for g, a in enumerate(test.get("group_accuracy") or []):
            row[f"group_accuracy[{names[g] if g < len(names) else g}]"] = a
        for k in ("accuracy", "worst_group_accuracy", "worst_class_accuracy"):
            row[f"selection_{k}"] = sel.get(k)
        diag = r.get("diagnostics") or {}
        row["effective_size"], row["effective_top_k"] = diag.get("size"), diag.get("top_k")
        row["heldout_size"] = diag.get("heldout_size")
        row["fit_seconds"] = r.get("fit_seconds")
        row["params"] = json.dumps(r.get("params"), sort_keys=True)
        for k, v in flatten_params(r.get("params") or {}).items():
            row[f"param:{k}"] = json.dumps(v) if isinstance(v, tuple) else v
        row.update({"code_version": r.get("code_version"), "git_commit": r.get("git_commit"),
                    "bundle_fingerprint": r.get("bundle_fingerprint"), "data_hash": r.get("data_hash"),
                    "finished_at": r.get("finished_at")})
        rows.append(row)
    df = pd.DataFrame(rows)
    return df.sort_values(["benchmark", "method", "label", "seed"]) if not df.empty else df


def _fmt_missing(rows: Sequence[dict], statuses: dict[str, str], limit: int = 8) -> str:
    parts = []
    for r in rows[:limit]:
        st = statuses.get(r["run_id"], "not started")
        parts.append(f"{r['benchmark']} seed {r['seed']} {r['label']} ({st})")
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return "; ".join(parts) + more


def write_paper_report(store: str | Path, out_dir: str | Path, *, partial: bool = False,
                       title: str | None = None) -> ReportResult:
    """Write the report of a results store into ``out_dir``.

    Parameters
    ----------
    store : path
        A ``results.sqlite`` file or a folder holding one (see :func:`find_store`).
    out_dir : path
        Created if needed; existing report files are replaced atomically.
    partial : bool, default=False
        Show items whose planned runs are not all done (marked incomplete) instead of
        only listing what is missing.
    title : str, optional
        Default: the first stored experiment's ``report.title``, else "gradtune results".
    """
    from gradtune.results.store import ResultStore, find_store

    require_figures()  # before anything is written: a missing matplotlib leaves no partial report
    store_path = find_store(store)
    st = ResultStore(store_path, readonly=True)
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    all_records = st.records(status=None)
    statuses = {r["run_id"]: r["status"] for r in all_records}
    done = [r for r in all_records if r["status"] == "done"]
    experiments = st.experiments()
    norms = st.norms()
    bundles = st.bundles()
    frame = runs_frame(done)
    links: dict[str, list[str]] = {}
    for e in experiments:
        for link in e["runs"]:
            links.setdefault(link["run_id"], []).append(e["name"])
    fp_of = {r["run_id"]: r["bundle_fingerprint"] for r in all_records}
    title = title or next((e["config"].get("report", {}).get("title") for e in experiments
                           if e["config"].get("report", {}).get("title")), None) or "gradtune results"

    result = ReportResult(paths={})
    doc = Document(title)
    counts = {s: sum(1 for r in all_records if r["status"] == s) for s in ("done", "failed", "running")}
    doc.p(f"Generated by `gradtune report` from {store_path.name} on "
          f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. Every number below is read from the "
          f"stored runs: {counts['done']} done, {counts['failed']} failed, {counts['running']} unfinished.")
    doc.p("Conventions: Avg = plain test accuracy; WGA = worst-group test accuracy; cells are mean ± standard "
          "deviation over seeds (population std, ddof=0), in percent; a cell with one seed shows the value alone. "
          "Group-label columns say whether a method reads group labels to train its last layer / to select "
          "hyperparameters. Test rows are never used for any choice.")

    exp_lines = []
    for e in experiments:
        cfg = e["config"]
        planned = {link["run_id"] for link in e["runs"]}
        n_done = sum(1 for rid in planned if statuses.get(rid) == "done")
        desc = cfg.get("description") or ""
        exp_lines.append(f"{e['name']}: {n_done}/{cfg.get('n_planned', len(planned))} runs done"
                         f"{' — ' + desc if desc else ''}")
    if exp_lines:
        doc.h(2, "Experiments in the store")
        doc.ul(exp_lines)
        for e in experiments:
            for note in e["config"].get("report", {}).get("notes", []) or []:
                doc.p(f"{e['name']}: {note}")
    if bundles:
        brows = []
        for b in bundles:
            sizes = b.get("split_sizes") or {}
            brows.append({"Benchmark": b["benchmark"], "Seed": b["seed"],
                          **{s: sizes.get(s, "") for s in ("train", "heldout", "selection", "test")},
                          "Features": b["n_features"], "Groups": len(b.get("group_names") or []) or "",
                          "Fingerprint": b["fingerprint"], "Source": b["source"]})
        doc.h(2, "Bundles")
        doc.p("One bundle per benchmark and seed (the ERM model of that seed and the seed's split of the validation "
              "rows into held-out and selection halves); the fingerprint is part of every run id.")
        doc.table(pd.DataFrame(brows))
    log = st.run_log()
    if log:
        doc.h(2, "How these runs were made")
        doc.ul([f"{e.get('at', '')[:19].replace('T', ' ')} UTC: `{e.get('command') or 'run_experiments(...)'}` "
                f"({e.get('launcher')}): {e.get('new')} runs computed, {e.get('reused')} already stored, "
                f"{e.get('failed')} failed, {e.get('seconds')} s" for e in log[-8:]])
    versions = sorted({f"{r.get('code_version')} ({r.get('git_commit') or 'no git'})" for r in done})
    if versions:
        doc.p("Code: gradtune " + "; ".join(versions) + ".")

    tables_long: list[pd.DataFrame] = []
    pending: dict[Path, str] = {}  # table CSVs, written with the rest once every figure is drawn

    def requesting(item: str) -> list[dict]:
        return [e for e in experiments if item in (e["config"].get("report", {}).get("tables") or [])]

    def plan_of(exps: list[dict]) -> tuple[list[dict], int]:
        seen, plan = set(), []
        for e in exps:
            for link in e["runs"]:
                if link["run_id"] not in seen:
                    seen.add(link["run_id"])
                    plan.append(link)
        unplanned = sum(max(0, int(e["config"].get("n_planned", len(e["runs"]))) - len(e["runs"])) for e in exps)
        return plan, unplanned

    def benchmarks_of(exps: list[dict], sub: pd.DataFrame) -> list[str]:
        names: list[str] = []
        for e in exps:
            for b in e["config"].get("benchmarks", []):
                names.append(b["name"] if isinstance(b, dict) else b)
        names += list(sub["benchmark"]) if not sub.empty else []
        return list(dict.fromkeys(names))

    def emit(tab: PaperTable, incomplete: bool) -> None:
        result.tables[tab.key] = tab
        result.shown.append(tab.key)
        doc.h(2, tab.title + (" (INCOMPLETE)" if incomplete else ""))
        doc.table(tab.display)
        doc.ul(tab.notes)
        pending[out_dir / f"{tab.key}.csv"] = tab.display.to_csv(index=False)
        if not tab.numbers.empty:
            tables_long.append(tab.numbers)

    for spec in REPORT_ITEMS.values():
        item = spec.key
        exps = requesting(item)
        if not exps:
            result.missing[item] = f"no stored experiment asks for it; run the {spec.config} config into this store"
            continue
        plan, unplanned = plan_of(exps)
        rep = exps[0]["config"].get("report", {})
        method, baseline = rep.get("method", "gradtune"), rep.get("baseline", "erm")
        planned_ids = [p["run_id"] for p in plan]
        labels: dict[str, str] = {}
        for p in plan:
            labels.setdefault(p["run_id"], p["label"])
        sub = frame[frame["run_id"].isin(planned_ids)].copy() if not frame.empty else frame
        if not sub.empty:
            sub["label"] = sub["run_id"].map(labels)
        benchmarks = benchmarks_of(exps, sub)
        ctx = ItemContext(item, sub, plan, benchmarks, method, baseline, False, doc, fig_dir, emit, result.shown,
                          result.paths)
        if spec.norms:
            keys = {(p["benchmark"], p["seed"]) for p in plan}
            fps = {fp_of[p["run_id"]] for p in plan if p["run_id"] in fp_of}
            entries = [n for n in norms if n["bundle_fingerprint"] in fps and n.get("groups") is not None]
            have = {(n["benchmark"], n["seed"]) for n in entries}
            lacking = sorted(keys - have)
            if not entries or (lacking and not partial):
                result.missing[item] = ("held-out gradient norms with group labels are missing for "
                                        + ", ".join(f"{b} seed {s}" for b, s in lacking[:8]))
                continue
            entries.sort(key=lambda n: (benchmarks.index(n["benchmark"]) if n["benchmark"] in benchmarks else 99,
                                        n["seed"]))
            ctx.entries, ctx.lacking = entries, lacking
            spec.render(ctx)
            continue

        missing_runs = [p for p in plan if statuses.get(p["run_id"]) != "done"]
        if (missing_runs or unplanned) and not partial:
            why = []
            if missing_runs:
                why.append(f"{len(missing_runs)} of {len(plan)} planned runs are not done: "
                           + _fmt_missing(missing_runs, statuses))
            if unplanned:
                why.append(f"{unplanned} runs were never planned (the run was interrupted while loading bundles)")
            result.missing[item] = "; ".join(why) + f" (rerun {', '.join(e['name'] for e in exps)} to finish)"
            continue
        ctx.incomplete = bool(missing_runs or unplanned)
        if not spec.render(ctx):
            result.missing[item] = (f"the store has no runs of {method!r} that vary what this item needs in the "
                                    f"experiments {[e['name'] for e in exps]}")

    if result.missing:
        doc.h(2, "Not in this report")
        doc.ul([f"{k} ({REPORT_ITEMS[k].title if k in REPORT_ITEMS else k}): {v}"
                for k, v in result.missing.items()])
    for path, text in pending.items():
        atomic_write_text(path, text)
    runs_csv = _results_csv(done, links)
    result.paths["results_csv"] = atomic_write_text(out_dir / "results.csv", runs_csv.to_csv(index=False))
    long = pd.concat(tables_long, ignore_index=True) if tables_long else pd.DataFrame(
        columns=["item", "row", "benchmark", "metric", "mean", "std", "n"])
    result.paths["tables_csv"] = atomic_write_text(out_dir / "tables.csv", long.to_csv(index=False))
    doc.h(2, "Files")
    doc.ul(["results.csv: one row per finished run (all metrics as fractions, per-group accuracies, parameters, "
            "code version, bundle fingerprint)",
            "tables.csv: every number shown in the tables (mean, std and n over seeds, in percent; gradient norms "
            "unscaled)", "<item>.csv: each table as displayed", "figures/: the PNG figures"])
    result.paths.update(doc.write(out_dir))
    return result
