"""Figures from stored results (matplotlib, Agg backend, PNG).

* :func:`plot_norm_distributions` — held-out gradient-norm distribution per group
  under the ERM head, pooled over seeds (the paper's Fig. 2), with the per-seed
  group means ± std as markers (Fig. 4).
* :func:`plot_group_accuracy` — per-group test accuracy of several methods,
  mean ± std over seeds (the paper's Table 7 as a picture).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

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
    bins = np.linspace(0, np.quantile(norms, 0.995) if norms.size else 1, 40)
    for g in range(n_groups):
        sel = norms[groups == g]
        if sel.size:
            ax1.hist(sel, bins=bins, density=True, histtype="step", linewidth=1.8, label=f"{names[g]} (n={sel.size})")
    ax1.set_xlabel("per-sample gradient norm of the last layer (ERM head)")
    ax1.set_ylabel("density")
    ax1.set_title(f"{title}: held-out gradient norms by group")
    ax1.legend(fontsize=8)
    means = np.array([[np.mean(np.asarray(d["norms"])[np.asarray(d["groups"]) == g])
                       if np.any(np.asarray(d["groups"]) == g) else np.nan for g in range(n_groups)]
                      for d in per_seed])
    ax2.bar(range(n_groups), np.nanmean(means, 0), yerr=np.nanstd(means, 0), color="tab:gray", capsize=4)
    ax2.set_xticks(range(n_groups), names, rotation=30, ha="right", fontsize=8)
    ax2.set_ylabel("mean norm (± std over seeds)")
    ax2.set_title("group means")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
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
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
