"""Judging ``gradtune-auto``'s candidates on one set of audit cells: the guard's record.

The rows of each validation half are judged by candidates that never saw them
(:mod:`~gradtune.methods.auto_crossfit`). Given which rows each candidate gets right, this
module computes what :func:`~gradtune.selection.guard.guard_choice` decides from, for one set
of cells (the regions of the twins' minority or of the ERM head's mistakes): each candidate's
worst cell accuracy on each half, the paired bootstrap bound of its gain over the ERM head, and
the floor. ``value_cells`` names the cell sets a fit is judged on, in order: with
``"mistakes_then_inferred"`` the twins' regions judge only when the mistakes' regions keep the
ERM head (:func:`~gradtune.selection.guard.replay_guards`).

Shapes: K candidates (the ERM head first), m rows of a judged half, C classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradtune.selection.audit import worst_cell_accuracy, worst_over_cell_sets
from gradtune.selection.guard import GuardRule, guard_record, paired_gain_bound

__all__ = ["VALUE_CELLS", "CELL_ORDER", "cell_values", "judged_record"]

#: the cell sets each ``value_cells`` setting judges on, in order
CELL_ORDER: dict[str, tuple[str, ...]] = {"inferred": ("inferred",), "mistakes": ("mistakes",),
                                          "mistakes_then_inferred": ("mistakes", "inferred")}
VALUE_CELLS = tuple(CELL_ORDER)


def cell_values(correct: np.ndarray, valid: np.ndarray, cells: np.ndarray, n_classes: int, min_rows: int,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Each head's worst accuracy over the cells (m,) of the rows it gets right (K, m), and that
    cell's size, each (K,); -inf (size 1) where ``valid`` (K,) is False (non-finite logits)."""
    k = len(correct)
    values, sizes = np.full(k, -np.inf), np.ones(k, dtype=np.int64)
    for i in np.flatnonzero(valid):
        values[i], sizes[i] = worst_cell_accuracy(correct[i], cells, 2 * int(n_classes), min_rows)
    return values, sizes


def judged_record(correct: list[np.ndarray], valid: np.ndarray, cells: list[np.ndarray],
                  floor_cells: list[tuple[np.ndarray, ...]], refused: np.ndarray, balanced: np.ndarray,
                  pseudo: np.ndarray, rule: GuardRule, n_classes: int, min_rows: int, *,
                  gain_quantile: float | None, rng: np.random.Generator, n_boot: int) -> dict[str, Any]:
    """The guard's record (:func:`~gradtune.selection.guard.guard_record`) of one cell set.

    Parameters
    ----------
    correct : per judged half, (K, m_h) bool, candidate k right on the half's row i
    valid : (K,) bool, candidates with finite logits
    cells : per half, (m_h,) the cells the value reads (class x region ids)
    floor_cells : per half, the cell arrays (m_h,) the floor reads (the worst over all of them)
    refused : (K,) bool, candidates refused before the guard (their value and floor are 0)
    balanced, pseudo : (K,) class-balanced accuracy and the pseudo-group mean, halves pooled
    rule : GuardRule; gain_quantile, rng, n_boot : the paired bootstrap bound (None: off)
    """
    n_cells = 2 * int(n_classes)
    halves = [cell_values(ok, valid, c, n_classes, min_rows) for ok, c in zip(correct, cells, strict=True)]
    values = [np.where(refused, 0.0, v) for v, _ in halves]
    floors = [np.where(refused, 0.0, worst_over_cell_sets(ok, fc, n_cells, min_rows))
              for ok, fc in zip(correct, floor_cells, strict=True)]
    lower = None if gain_quantile is None else paired_gain_bound(
        list(zip(correct, cells, strict=True)), n_cells, min_rows, float(gain_quantile), rng, int(n_boot))
    vb, nb = (values[1], halves[1][1]) if len(halves) > 1 else (None, None)   # crossfit: the other half
    return guard_record(values[0], halves[0][1], balanced, rule, vb, nb, pseudo=pseudo, lower=lower,
                        floor_values=np.mean(floors, axis=0))
