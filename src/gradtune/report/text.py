"""Plain-text tables for the terminal."""

from __future__ import annotations

from collections.abc import Sequence


def _pct(v: float | None) -> str:
    return "   -  " if v is None else f"{100 * v:6.1f}"


def group_table(before: dict, after: dict, group_names: Sequence[str] | None = None) -> str:
    """Before/after accuracy table (percent) from two ``GroupReport.to_dict()`` results."""
    lines = [f"{'':28s} {'before':>7s} {'after':>7s}"]
    rows = [("accuracy", "accuracy"), ("worst-class accuracy", "worst_class_accuracy")]
    if before.get("group_accuracy"):
        rows += [("worst-group accuracy", "worst_group_accuracy"),
                 ("mean group accuracy", "mean_group_accuracy")]
        if before.get("weighted_accuracy") is not None:
            rows.append(("train-weighted accuracy", "weighted_accuracy"))
    for label, key in rows:
        lines.append(f"{label:28s} {_pct(before.get(key))} {_pct(after.get(key))}")
    for g, (a, b) in enumerate(zip(before.get("group_accuracy", []), after.get("group_accuracy", []), strict=False)):
        name = group_names[g] if group_names and g < len(group_names) else f"group {g}"
        n = before["group_count"][g]
        lines.append(f"  {name[:18]:18s} n={n:<5d} {_pct(a)} {_pct(b)}")
    return "\n".join(lines)
