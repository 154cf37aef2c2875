"""The paper report's items (Table 1, Figure 2, ...): a registry of renderers.

Each item is registered where its renderer is defined (:func:`report_item`): its key (the
name a config's ``report.tables`` asks for), its title, the packaged configs that produce
it, and whether it reads the stored held-out gradient norms instead of runs. The items
are rendered in registration order. The config checker reads the keys and titles out of
this module's text (:func:`gradtune._names.report_items`), so it never imports pandas.

A renderer gets an :class:`ItemContext` (the planned runs' rows, the benchmarks, the
method and baseline the experiment names, the document and its helpers) and returns
whether it showed anything; ``False`` lists the item as missing with the generic reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from gradtune.report.document import Document
from gradtune.report.figures import fig_norm_distributions, fig_norm_means, fig_sweep
from gradtune.report.paper_tables import (
    RESET_ROWS,
    SAMPLER_ROWS,
    PaperTable,
    group_table,
    norm_table,
    size_table,
    sweep_table,
    table1,
    topk_table,
)
from gradtune.report.summary import comparison_notes

__all__ = ["ItemContext", "ReportItem", "REPORT_ITEMS", "report_item"]

_SIZE_RULE = ("Set-size rule: GradTune asks for M' samples with the top k by gradient norm. When a held-out half "
              "has N < M' rows (size_rule='scale'), the whole half is used and k is scaled to keep k/M' "
              "(k_eff = round(k * N / M')); the effective values are stored with each run and named under the "
              "table wherever they differ from the requested ones.")


@dataclass
class ItemContext:
    """What a renderer works with.

    sub : the planned runs' rows (with their ``label``); plan : the planned run links;
    benchmarks : in the experiments' order; method / baseline : the experiment's
    ``report.method`` / ``report.baseline``; incomplete : some planned runs are not done
    (a partial report); entries / lacking : the stored gradient norms and the
    (benchmark, seed) pairs without them (norm items only); emit : adds a table.
    """

    key: str
    sub: pd.DataFrame
    plan: list[dict]
    benchmarks: list[str]
    method: str
    baseline: str
    incomplete: bool
    doc: Document
    fig_dir: Path
    emit: Callable[[PaperTable, bool], None]
    shown: list[str]
    paths: dict[str, Path]
    entries: list[dict] = field(default_factory=list)
    lacking: list[tuple[str, int]] = field(default_factory=list)

    def mark(self) -> str:
        return " (INCOMPLETE)" if self.incomplete else ""


@dataclass(frozen=True)
class ReportItem:
    """One registered item: ``render(ctx) -> bool`` (False: nothing to show)."""

    key: str
    title: str
    config: str
    render: Callable[[ItemContext], bool]
    norms: bool = False


REPORT_ITEMS: dict[str, ReportItem] = {}
"""The items by key, in the report's order."""


def report_item(key: str, title: str, *, config: str,
                norms: bool = False) -> Callable[[Callable[[ItemContext], bool]], Callable[[ItemContext], bool]]:
    """Decorator: register a renderer as the report item ``key`` (see the module docstring)."""
    def register(render: Callable[[ItemContext], bool]) -> Callable[[ItemContext], bool]:
        if key in REPORT_ITEMS:
            raise TypeError(f"report item {key!r} is already registered")
        REPORT_ITEMS[key] = ReportItem(key, title, config, render, norms)
        return render

    return register


def _baseline_numbers(base: pd.DataFrame, benchmarks: list[str]) -> pd.DataFrame | None:
    from gradtune.report.paper_tables import aggregate

    if base.empty:
        return None
    rows = []
    for b in benchmarks:
        cb = base[base["benchmark"] == b]
        for short, col in (("Avg", "accuracy"), ("WGA", "worst_group_accuracy")):
            m, s, n = aggregate(cb[col].tolist())
            rows.append({"benchmark": b, "metric": short, "mean": m, "std": s, "n": n})
    return pd.DataFrame(rows)


def _comparisons(sub: pd.DataFrame, plan: list[dict], method: str, baselines: tuple[str, ...]) -> list[str]:
    """One sentence per benchmark and baseline: does the method's first setting beat it on mean WGA?"""
    first: dict[str, str] = {}
    for p in plan:
        first.setdefault(p["method"], p["label"])
    if method not in first or sub.empty:
        return []
    frame = sub.assign(method=sub["label"])
    notes = []
    for base in baselines:
        if base in first and base != method:
            notes += comparison_notes(frame, first[method], first[base])
    return notes


_TABLE1 = "paper-table1 / offline-table1"


@report_item("table1", "Table 1: methods x benchmarks, average and worst-group accuracy", config=_TABLE1)
def _table1(ctx: ItemContext) -> bool:
    order = list(dict.fromkeys(p["label"] for p in ctx.plan))
    tab = table1(ctx.sub, order, ctx.benchmarks)
    tab.notes += _comparisons(ctx.sub, ctx.plan, ctx.method, (ctx.baseline, "random"))
    ctx.emit(tab, ctx.incomplete)
    return True


@report_item("fig2", "Figure 2: held-out gradient-norm distributions per group", config=_TABLE1, norms=True)
def _fig2(ctx: ItemContext) -> bool:
    path = fig_norm_distributions(ctx.entries, ctx.fig_dir / "fig2-gradnorm-distributions.png")
    ctx.doc.h(2, "Figure 2: held-out gradient-norm distribution per group" + (" (INCOMPLETE)" if ctx.lacking else ""))
    ctx.doc.fig(path, "Figure 2: density of the ERM head's per-sample last-layer gradient norms on the "
                "held-out half, per group; mean over seeds of per-seed densities (band: ± std).")
    ctx.shown.append(ctx.key)
    ctx.paths[ctx.key] = path
    return True


@report_item("fig4", "Figure 4: mean held-out gradient norm per group, mean +- std over seeds", config=_TABLE1,
             norms=True)
def _fig4(ctx: ItemContext) -> bool:
    means = norm_table(ctx.entries)
    path = fig_norm_means(ctx.entries, ctx.fig_dir / "fig4-gradnorm-group-means.png")
    if means is not None:
        ctx.emit(means, bool(ctx.lacking))
    ctx.doc.fig(path, "Figure 4: mean held-out gradient norm of each group under the ERM head, mean ± std over seeds.")
    ctx.paths[ctx.key] = path
    return True


@report_item("fig3", "Figure 3: worst-group accuracy vs fine-tuning set size M'",
             config="ablation-size / offline-ablation-size")
def _fig3(ctx: ItemContext) -> bool:
    tab = size_table(ctx.sub, method=ctx.method, benchmarks=ctx.benchmarks)
    if tab is None:
        return False
    base = ctx.sub[ctx.sub["method"] == ctx.baseline]
    path = fig_sweep(tab.numbers, _baseline_numbers(base, ctx.benchmarks), ctx.fig_dir / "fig3-set-size.png",
                     x_label="fine-tuning set size M'", metrics=["WGA"], log_x=True,
                     title="Worst-group accuracy vs fine-tuning set size (mean ± std over seeds; dashed: ERM)")
    ctx.doc.h(2, "Figure 3: worst-group accuracy vs fine-tuning set size" + ctx.mark())
    ctx.doc.fig(path, "Figure 3: GradTune's worst-group test accuracy for each M' (k = 0.8 M').")
    tab.title = "Figure 3 data: test accuracy (%) for each fine-tuning set size"
    tab.notes.insert(0, _SIZE_RULE)
    ctx.emit(tab, ctx.incomplete)
    ctx.paths[ctx.key] = path
    return True


@report_item("table4", "Table 4: class-balanced vs class-imbalanced (uniform) fine-tuning",
             config="ablation-balance / offline-ablation-balance")
def _table4(ctx: ItemContext) -> bool:
    tab = sweep_table(ctx.sub, key="table4", title="Table 4: GradTune with class-balanced vs class-imbalanced "
                      "(uniform) fine-tuning, test accuracy (%)", method=ctx.method, param="finetune.sampler",
                      row_names=SAMPLER_ROWS, benchmarks=ctx.benchmarks, baseline=ctx.baseline,
                      order=["uniform", "class_balanced", "weighted"])
    return _emit(ctx, tab)


@report_item("table5", "Table 5: fine-tuning vs retraining (reset) the last layer",
             config="ablation-retrain / offline-ablation-retrain")
def _table5(ctx: ItemContext) -> bool:
    tab = sweep_table(ctx.sub, key="table5", title="Table 5: GradTune with last-layer retraining (reset) vs "
                      "fine-tuning, test accuracy (%)", method=ctx.method, param="finetune.reset",
                      row_names=RESET_ROWS, benchmarks=ctx.benchmarks, baseline=ctx.baseline, order=[True, False])
    return _emit(ctx, tab)


@report_item("table6", "Table 6: sweep over top-k, with the worst group named", config="ablation-k / offline-ablation-k")
def _table6(ctx: ItemContext) -> bool:
    tab = topk_table(ctx.sub, method=ctx.method, benchmarks=ctx.benchmarks)
    if tab is not None:
        tab.notes.insert(0, _SIZE_RULE)
    return _emit(ctx, tab)


@report_item("fig5", "Figure 5: average and worst-group accuracy vs k", config="ablation-k / offline-ablation-k")
def _fig5(ctx: ItemContext) -> bool:
    tab = topk_table(ctx.sub, method=ctx.method, benchmarks=ctx.benchmarks)
    if tab is None:
        return False
    nums = tab.numbers.copy()
    nums["x"] = [float(str(r).split(" ")[0]) for r in nums["row"]]
    ref = _baseline_numbers(ctx.sub[ctx.sub["method"] == ctx.baseline], ctx.benchmarks)
    path = fig_sweep(nums, ref, ctx.fig_dir / "fig5-topk.png", x_label="top-k (of M')", metrics=["Avg", "WGA"],
                     title="Average and worst-group accuracy vs k (mean ± std over seeds; dashed: ERM)")
    ctx.doc.h(2, "Figure 5: average and worst-group accuracy vs k" + ctx.mark())
    ctx.doc.fig(path, "Figure 5: GradTune's test accuracy and WGA for each k (the numbers and notes are Table 6's).")
    ctx.shown.append(ctx.key)
    ctx.paths[ctx.key] = path
    return True


@report_item("table7", "Table 7: per-group accuracy before (ERM) and after GradTune", config=_TABLE1)
def _table7(ctx: ItemContext) -> bool:
    sub = ctx.sub
    msub = sub[sub["method"] == ctx.method]
    if msub.empty:
        return False
    first_label = next(p["label"] for p in ctx.plan if p["method"] == ctx.method and p["run_id"] in
                       set(msub["run_id"]))
    msub = msub[msub["label"] == first_label]
    tab = group_table(sub, before=sub[sub["method"] == ctx.baseline], after=msub, benchmarks=ctx.benchmarks,
                      after_name=f"ERM after {first_label}")
    return _emit(ctx, tab)


def _emit(ctx: ItemContext, tab: Any) -> bool:
    if tab is None:
        return False
    ctx.emit(tab, ctx.incomplete)
    return True
