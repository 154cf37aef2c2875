"""Figures from stored results (matplotlib, Agg backend, PNG).

* :func:`plot_norm_distributions` — held-out gradient-norm distribution per group
  under the ERM head, pooled over seeds (the paper's Fig. 2), with the per-seed
  group means ± std as markers (Fig. 4).
* :func:`plot_group_accuracy` — per-group test accuracy of several methods,
  mean ± std over seeds (the paper's Table 7 as a picture).
* :func:`fig_norm_distributions` / :func:`fig_norm_means` — the paper's Fig. 2 / Fig. 4,
  one panel per benchmark.
* :func:`fig_sweep` — the paper's Fig. 3 (WGA vs M') and Fig. 5 (Avg and WGA vs k).

Every function draws from stored numbers only and writes one PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gradtune._io import save_figure

__all__ = ["require_figures", "bulk_range", "outside_note", "plot_norm_distributions", "plot_group_accuracy", "fig_norm_distributions", "fig_norm_means",
           "fig_sweep"]


def require_figures() -> None:
    """Raise :class:`~gradtune._optional.MissingDependencyError` now if matplotlib is missing
    (called before a report writes anything, so that no partial report is left)."""
    from gradtune._optional import require

    require("matplotlib", extra="report", purpose="the report's figures")


def _plt():
    from gradtune._optional import require

    matplotlib = require("matplotlib", extra="report", purpose="the report's figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_norm_distributions(per_seed: Sequence[dict], group_names: Sequence[str] | None, title: str,
                            path: str | Path) -> Path:
    """``per_seed``: dicts with 'norms' (N,) and 'groups' (N,) lists from the ERM held-out pass."""
    plt = _plt()
    norms = np.concatenate([np.asarray(d["norms"]) for d in per_seed])
    groups = np.concatenate([np.asarray(d["groups"]) for d in per_seed])
    n_groups = int(groups.max()) + 1
    names = list(group_names) if group_names else [f"group {g}" for g in range(n_groups)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    # Log-spaced bins over the bulk of the norms (they span decades); the tails outside it are
    # left out of the histogram and counted in the axis label, never piled up at an edge.
    lo, hi = bulk_range(norms)
    bins = np.geomspace(lo, hi, 45)
    for g in range(n_groups):
        sel = norms[groups == g]
        if sel.size:
            ax1.hist(sel[(sel >= lo) & (sel <= hi)], bins=bins, histtype="step", linewidth=1.8,
                     weights=np.full(int(((sel >= lo) & (sel <= hi)).sum()), 1.0 / sel.size),
                     label=f"{names[g]} (n={sel.size})")
    ax1.set_xscale("log")
    ax1.set_xlabel("per-sample gradient norm of the last layer (ERM head), log scale\n"
                   + outside_note(norms, lo, hi))
    ax1.set_ylabel("fraction of the group")
    ax1.set_title(f"{title}: held-out gradient norms by group")
    _legend_outside(ax1, below=True, ncol=2)
    means = np.array([[np.mean(np.asarray(d["norms"])[np.asarray(d["groups"]) == g])
                       if np.any(np.asarray(d["groups"]) == g) else np.nan for g in range(n_groups)]
                      for d in per_seed])
    ax2.bar(range(n_groups), np.nanmean(means, 0), yerr=np.nanstd(means, 0), color="tab:gray", capsize=4)
    ax2.set_xticks(range(n_groups), names, rotation=30, ha="right", fontsize=8)
    ax2.set_ylabel("mean norm (± std over seeds)")
    ax2.set_title("group means")
    _finish(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_group_accuracy(acc: dict[str, list[list[float | None]]], group_names: Sequence[str], title: str,
                        path: str | Path) -> Path:
    """``acc[method]``: per seed, a list of per-group accuracies (fractions)."""
    plt = _plt()
    methods = list(acc)
    n_groups = len(group_names)
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * n_groups + 2), 3.8))
    for i, m in enumerate(methods):
        vals = np.array([[np.nan if v is None else v for v in seed] for seed in acc[m]], dtype=float)
        mean, std = 100 * np.nanmean(vals, 0), 100 * np.nanstd(vals, 0)
        ax.bar(np.arange(n_groups) + (i - (len(methods) - 1) / 2) * width, mean, width, yerr=std, capsize=3, label=m)
    ax.set_xticks(range(n_groups), group_names, rotation=20, ha="right", fontsize=9)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{title}: per-group test accuracy (mean ± std over seeds)")
    _legend_outside(ax)
    _finish(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def bulk_range(norms: np.ndarray, low: float = 0.01, high: float = 0.995) -> tuple[float, float]:
    """The axis range of a norm histogram: the ``low`` and ``high`` quantiles of the positive
    norms (at least a decade wide); the upper tail, where the minority's large norms sit,
    is kept almost whole. Norms of near-certain correct predictions
    reach 1e-8 and below; a fixed floor would pile them into one spike at the edge.

    norms : (N,) non-negative floats
    """
    positive = np.asarray(norms, dtype=float)
    positive = positive[positive > 0]
    if positive.size == 0:
        return 1e-3, 1.0
    lo, hi = (float(q) for q in np.quantile(positive, [low, high]))
    if hi <= lo * 10:
        mid = np.sqrt(lo * hi)
        lo, hi = mid / np.sqrt(10), mid * np.sqrt(10)
    return lo, hi


def outside_note(norms: np.ndarray, lo: float, hi: float, *, short: bool = False) -> str:
    """What a histogram on [lo, hi] leaves out: how many norms fall below ``lo`` (zeros
    among them) and above ``hi``, of how many; ``short`` for a panel title."""
    norms = np.asarray(norms, dtype=float)
    below, above = int((norms < lo).sum()), int((norms > hi).sum())
    if short:
        return f"not drawn: {below} < {lo:.0e}, {above} > {hi:.0e} (of {norms.size})"
    return (f"not drawn: {below} norms below {lo:.1e} (incl. {int((norms == 0).sum())} zeros) and "
            f"{above} above {hi:.1e}, of {norms.size}")


def _legend_outside(ax: Any, *, below: bool = False, ncol: int = 1) -> None:
    """A legend outside the data area: right of the axes, or under its x label (placed there
    by :func:`_finish` once the label's size is known)."""
    if below:
        leg = ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol, frameon=False)
        leg._gradtune_below = True
    else:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _finish(fig: Any) -> None:
    """Lay the figure out with every 'below' legend just under its axes' x label."""
    for _ in range(3):  # the label moves with the layout: lay out and place until it settles
        fig.tight_layout()
        fig.canvas.draw()  # the labels take their laid-out places at draw time
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            leg = ax.get_legend()
            if leg is None or not getattr(leg, "_gradtune_below", False):
                continue
            boxes = [ax.xaxis.label.get_window_extent(renderer)]
            boxes += [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
            bottom = min(b.y0 for b in boxes) - 4
            leg.set_bbox_to_anchor((0.5, ax.transAxes.inverted().transform((0, bottom))[1]), transform=ax.transAxes)


# ===================================================================== paper figures


def _panels(n: int, width: float = 4.6, height: float = 3.6):
    plt = _plt()
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat[:n])


def _save(plt, fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _finish(fig)
    save_figure(fig, path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _by_benchmark(entries: Sequence[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in entries:
        if e.get("groups") is not None:
            out.setdefault(e["benchmark"], []).append(e)
    return out


def fig_norm_distributions(entries: Sequence[dict], path: str | Path) -> Path:
    """Paper Fig. 2: per benchmark, the density of held-out gradient norms of each group under
    the ERM head on a log axis (norms span decades); the line is the mean over seeds of the
    per-seed densities of log10(norm), the band ± std.

    ``entries``: dicts with benchmark, seed, norms (N,), groups (N,), group_names.
    """
    by_b = _by_benchmark(entries)
    plt, fig, axes = _panels(len(by_b), height=4.6)  # room for the legend under each panel
    for ax, (b, es) in zip(axes, by_b.items(), strict=True):
        names = next((e["group_names"] for e in es if e.get("group_names")), None)
        n_groups = max(max(e["groups"]) for e in es) + 1
        pooled = np.concatenate([np.asarray(e["norms"], dtype=float) for e in es])
        lo, hi = bulk_range(pooled)
        edges = np.linspace(np.log10(lo), np.log10(hi), 26)  # norms span decades: bins on log10
        centers = 10 ** ((edges[:-1] + edges[1:]) / 2)
        for g in range(n_groups):
            dens = []
            for e in es:
                sel = np.asarray(e["norms"], dtype=float)[np.asarray(e["groups"]) == g]
                if sel.size:
                    # density of the whole group (tails included in the normalisation, not drawn)
                    counts = np.histogram(np.log10(sel[(sel >= lo) & (sel <= hi)]), bins=edges)[0]
                    dens.append(counts / (sel.size * np.diff(edges)))
            if not dens:
                continue
            d = np.asarray(dens)
            label = (names[g] if names and g < len(names) else f"group {g}")
            n_avg = np.mean([np.sum(np.asarray(e["groups"]) == g) for e in es])
            line = ax.plot(centers, d.mean(0), linewidth=1.8, label=f"{label} (n≈{n_avg:.0f})")[0]
            ax.fill_between(centers, np.maximum(d.mean(0) - d.std(0), 0), d.mean(0) + d.std(0), alpha=0.15,
                            color=line.get_color())
        ax.set_xscale("log")
        ax.set_title(f"{b} ({len(es)} seeds)\n{outside_note(pooled, lo, hi, short=True)}", fontsize=10)
        ax.set_xlabel("last-layer gradient norm, ERM head (log scale)")
        ax.set_ylabel("density of log10 norm")
        _legend_outside(ax, below=True, ncol=2)
    fig.suptitle("Held-out gradient-norm distribution per group (the axis shows the bulk of the norms; "
                 "the rest are counted under each panel)", fontsize=11)
    return _save(plt, fig, path)


def fig_norm_means(entries: Sequence[dict], path: str | Path) -> Path:
    """Paper Fig. 4: per benchmark, each group's mean held-out gradient norm, mean ± std over seeds."""
    by_b = _by_benchmark(entries)
    plt, fig, axes = _panels(len(by_b), width=4.2)
    for ax, (b, es) in zip(axes, by_b.items(), strict=True):
        names = next((e["group_names"] for e in es if e.get("group_names")), None)
        n_groups = max(max(e["groups"]) for e in es) + 1
        means = np.array([[np.mean(np.asarray(e["norms"], dtype=float)[np.asarray(e["groups"]) == g])
                           if np.any(np.asarray(e["groups"]) == g) else np.nan for g in range(n_groups)]
                          for e in es])
        with np.errstate(all="ignore"):
            mu, sd = np.nanmean(means, 0), np.nanstd(means, 0)
        labels = [names[g] if names and g < len(names) else f"group {g}" for g in range(n_groups)]
        ax.bar(range(n_groups), mu, yerr=sd, capsize=4, color="tab:blue", alpha=0.8)
        ax.set_xticks(range(n_groups), labels, rotation=25, ha="right", fontsize=9)
        ax.set_ylabel("mean gradient norm")
        ax.set_title(f"{b} ({len(es)} seeds)", fontsize=11)
    fig.suptitle("Mean held-out gradient norm per group (ERM head), mean ± std over seeds", fontsize=12)
    return _save(plt, fig, path)


def fig_sweep(numbers: Any, baseline: Any, path: str | Path, *, x_label: str, metrics: Sequence[str],
              title: str, log_x: bool = False) -> Path:
    """Paper Fig. 3 / Fig. 5: per benchmark, metric(s) vs a swept parameter, mean ± std over seeds.

    numbers : DataFrame with benchmark, metric, mean, std, x (percent)
    baseline : DataFrame with benchmark, metric, mean (the ERM reference, dashed) or None
    """
    benchmarks = list(dict.fromkeys(numbers["benchmark"]))
    plt, fig, axes = _panels(len(benchmarks))
    colors = {"WGA": "tab:red", "Avg": "tab:blue"}
    for ax, b in zip(axes, benchmarks, strict=True):
        nb = numbers[numbers["benchmark"] == b]
        for m in metrics:
            d = nb[nb["metric"] == m].sort_values("x")
            if d.empty:
                continue
            ax.errorbar(d["x"], d["mean"], yerr=d["std"], marker="o", capsize=3, color=colors.get(m),
                        label=f"GradTune {m}")
            if baseline is not None:
                ref = baseline[(baseline["benchmark"] == b) & (baseline["metric"] == m)]
                if not ref.empty and not np.isnan(ref["mean"].iloc[0]):
                    ax.axhline(ref["mean"].iloc[0], linestyle="--", color=colors.get(m), alpha=0.6,
                               label=f"ERM {m}")
        if log_x:
            ax.set_xscale("log")
        xs = sorted(set(nb["x"]))
        ax.set_xticks(xs, [str(int(x)) if float(x).is_integer() else str(x) for x in xs], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel(x_label)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(b, fontsize=11)
        _legend_outside(ax, below=True, ncol=2)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=12)
    return _save(plt, fig, path)
