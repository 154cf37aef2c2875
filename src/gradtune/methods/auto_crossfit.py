"""Cross-fitting for ``gradtune-auto``: which rows fit a candidate (or a region model) and which
rows judge it.

Every validation row is judged by heads that never saw it. With ``half_folds=1`` the rows
of one half are judged by heads fitted on the other half. With ``half_folds=F > 1`` each
half is split into F folds (stratified by class), and the rows of a fold are judged by heads
fitted on the other half *and* the rest of their own half, so a judged candidate is fitted
on a share ``1 - 1 / (2F)`` of the rows, closer to the head the refit returns (fitted on
all of them). The audit regions are learned the same way, so a row's cell never depends on
its own label.

Shapes: m scored rows, n rows of the other half, d features, K candidates.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gradtune.methods.auto_candidates import AutoCandidate
from gradtune.selection.audit import (
    class_folds,
    head_margins,
    pad_regions,
    region_cells,
    uncovered_classes,
)

__all__ = ["class_folds", "fold_cells", "halves_cells", "fold_correct", "pad_half", "pad_cells", "veto_rows",
           "vetoed", "minority_loss", "refused", "veto_reason", "half_counts", "PAD_MODES"]

#: how ``gradtune-auto`` treats a class whose audit region is too small (:func:`pad_cells`)
PAD_MODES = ("off", "margin", "region", "veto")

#: fit(x (n, d), y (n,), {inference: pseudo-group ids (n,)}) -> [(inference, candidate), ...], ERM first
FitFn = Callable[[np.ndarray, np.ndarray, dict[str, np.ndarray]], list[tuple[str, AutoCandidate]]]


def _without(folds: np.ndarray, j: int, own: np.ndarray, other: np.ndarray) -> np.ndarray:
    """The other half's rows followed by the own half's rows outside fold j (the other half
    itself, not a copy, when fold j is the whole own half)."""
    outside = folds != j
    return other if not outside.any() else np.concatenate([other, own[outside]])


def fold_cells(x_score: np.ndarray, y_score: np.ndarray, flag_score: np.ndarray, x_other: np.ndarray,
               y_other: np.ndarray, flag_other: np.ndarray, folds: np.ndarray, n_classes: int,
               min_in: int = 0, rare_share: float = 0.0) -> np.ndarray:
    """(m,) cell ids of the scored rows: fold j's rows are placed by a region model of the flag
    (:func:`~gradtune.selection.audit.region_cells`) fitted on the other half's rows and the
    scored half's rows outside fold j. ``min_in`` (> 0): each class's region on the scored half
    holds at least that many rows (shared among the folds) where its model exists, except in a
    class with fewer than ``rare_share / n_classes`` of the scored rows."""
    cells = np.empty(len(y_score), dtype=np.int64)
    flag_score, flag_other = np.asarray(flag_score, dtype=bool), np.asarray(flag_other, dtype=bool)
    for j in np.unique(folds):
        inside = folds == j
        share = float(inside.mean())
        cells[inside] = region_cells(_without(folds, j, x_score, x_other), _without(folds, j, y_score, y_other),
                                     _without(folds, j, flag_score, flag_other), x_score[inside], y_score[inside],
                                     n_classes, min_in=int(np.ceil(min_in * share)),
                                     min_class_rows=rare_share / n_classes * int(inside.sum()))
    return cells


def halves_cells(x_a: np.ndarray, y_a: np.ndarray, flag_a: np.ndarray, x_b: np.ndarray, y_b: np.ndarray,
                 flag_b: np.ndarray, folds_a: np.ndarray, folds_b: np.ndarray, n_classes: int,
                 min_in: int = 0, rare_share: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fold_cells` of both halves: (cells of half a (m,), cells of half b (n,))."""
    return (fold_cells(x_a, y_a, flag_a, x_b, y_b, flag_b, folds_a, n_classes, min_in, rare_share),
            fold_cells(x_b, y_b, flag_b, x_a, y_a, flag_a, folds_b, n_classes, min_in, rare_share))


def pad_half(cells: tuple[np.ndarray, ...], y: np.ndarray, logits: np.ndarray, n_classes: int, min_rows: int,
             rare_share: float) -> tuple[np.ndarray, ...]:
    """Each (m,) cell array of one half with its too-small region cells filled up to
    ``min_rows`` rows by :func:`~gradtune.selection.audit.pad_regions`, on the margins of the
    ERM head's (m, C) ``logits``; a class holding fewer than ``rare_share / n_classes`` of the
    half's rows is left as it is (a rare class is still refused by the coverage check)."""
    margins = head_margins(logits, y)
    least = float(rare_share) / int(n_classes) * len(y)
    return tuple(pad_regions(c, y, margins, n_classes, min_rows, min_class_rows=least) for c in cells)


def pad_cells(mode: str, cells: tuple[np.ndarray, ...], ys: tuple[np.ndarray, np.ndarray],
              logits: Callable[[], tuple[np.ndarray, np.ndarray]], n_classes: int, min_rows: int,
              rare_share: float) -> tuple[tuple[np.ndarray, ...], list[np.ndarray], list[np.ndarray] | None]:
    """The audit cells after ``mode`` (:data:`PAD_MODES`), what the coverage check reads, and
    the veto rows of each half.

    ``cells``: (audit cells, inferred-minority cells) of half a, then of half b; ``ys``: the
    labels of half a and half b; ``logits()``: the ERM head's (m, C) logits of both, asked for
    only by the two modes that pad. ``"margin"`` judges the padded
    cells (:func:`pad_half`); ``"veto"`` keeps the cells as they are, lets coverage read the
    padded ones and returns their rows in the small classes for :func:`vetoed`; ``"off"`` and
    ``"region"`` (filled when the cells were learned, :func:`halves_cells`) change nothing here.
    """
    if mode not in ("margin", "veto"):
        return cells, list(cells), None
    logits_a, logits_b = logits()
    padded = [*pad_half(cells[:2], ys[0], logits_a, n_classes, min_rows, rare_share),
              *pad_half(cells[2:], ys[1], logits_b, n_classes, min_rows, rare_share)]
    if mode == "margin":
        return tuple(padded), padded, None
    return cells, padded, [veto_rows(cells[0], padded[0], ys[0], n_classes, min_rows),
                           veto_rows(cells[2], padded[2], ys[1], n_classes, min_rows)]


def veto_rows(cells: np.ndarray, padded: np.ndarray, y: np.ndarray, n_classes: int, min_rows: int) -> np.ndarray:
    """(m,) bool: the region rows of ``padded`` (:func:`pad_half`'s cells of one half) in the
    classes whose own region in ``cells`` holds fewer than ``min_rows`` rows."""
    small = [k for k, _ in uncovered_classes([cells], n_classes, min_rows)]
    return (np.asarray(padded) % 2 == 1) & np.isin(y, small)


def vetoed(correct: list[np.ndarray], rows: list[np.ndarray]) -> np.ndarray:
    """(K,) bool: candidates that get fewer of some half's ``rows`` (m,) right than the ERM head,
    from each half's (K, m) ``correct`` (row 0: the ERM head).

    The padded cells hold the judged half's own mistakes, so a gain there is partly the
    cell's selection; they may only refuse a candidate that loses rows there, not reward one."""
    bad = np.zeros(len(correct[0]), dtype=bool)
    for ok, r in zip(correct, rows, strict=False):
        if np.any(r):
            acc = np.asarray(ok, dtype=np.float64)[:, np.asarray(r)].mean(axis=1)
            bad |= acc < acc[0] - 1e-12
    return bad


def minority_loss(correct: list[np.ndarray], inferred: list[np.ndarray]) -> np.ndarray:
    """(K,) the largest share, over the halves, of a half's *kept* rows that each candidate gets
    wrong, from each half's (K, m) ``correct`` (row 0: the ERM head) and (m,) inferred-minority
    cells (odd ids: the region of the inferred minority). Kept rows lie in that region and the
    ERM head gets them right: where its mistakes are not the minority, a repair of the
    mistakes' region can break the minority rows the head already handles."""
    loss = np.zeros(len(correct[0]))
    for ok, cells in zip(correct, inferred, strict=False):
        ok = np.asarray(ok, dtype=bool)
        kept = (np.asarray(cells) % 2 == 1) & ok[0]
        if np.any(kept):
            loss = np.maximum(loss, (~ok[:, kept]).mean(axis=1))
    return loss


def refused(correct: list[np.ndarray], veto: list[np.ndarray] | None, inferred: list[np.ndarray],
            max_loss: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(K,) bool candidates refused before the guard, by the padded cells' veto
    (:func:`vetoed`, when ``veto`` rows are given) or by a :func:`minority_loss` above
    ``max_loss`` (when not None); and (K,) that loss (a diagnostic either way)."""
    bad = np.zeros(len(correct[0]), dtype=bool) if veto is None else vetoed(correct, veto)
    loss = minority_loss(correct, inferred)
    return (bad if max_loss is None else bad | (loss > float(max_loss) + 1e-12)), loss


def half_counts(held_ids: np.ndarray, sel_ids: np.ndarray, n: int) -> dict[str, list[int]]:
    """Rows per id (n ids) on each validation half."""
    return {"heldout": np.bincount(held_ids, minlength=n).tolist(), "selection": np.bincount(sel_ids, minlength=n).tolist()}


def veto_reason(reason: str | None, bad: np.ndarray) -> str | None:
    """The guard's reason for keeping the ERM head, told true when :func:`refused` removed
    candidates (``bad`` (K,) bool; the refused candidates' values were zeroed, so the guard
    alone would report a best value of 0)."""
    n_bad, n_cand = int(np.sum(bad)), len(bad) - 1
    if reason is None or n_bad == 0:
        return reason
    what = ("rows the ERM head gets right among the least-margin rows of a class with few mistakes "
            "(pad_regions='veto') or in the inferred minority (minority_veto)")
    if n_bad >= n_cand:
        return f"every candidate ({n_cand}) was vetoed before the guard: each loses {what}"
    return f"{reason} ({n_bad} of {n_cand} candidates vetoed: they lose {what})"


def fold_correct(fit: FitFn, x_score: np.ndarray, y_score: np.ndarray, g_score: dict[str, np.ndarray],
                 x_other: np.ndarray, y_other: np.ndarray, g_other: dict[str, np.ndarray], folds: np.ndarray,
                 ) -> tuple[list[tuple[str, AutoCandidate]], np.ndarray, np.ndarray]:
    """Candidates fitted once per fold and judged on that fold's rows.

    Parameters
    ----------
    fit : the candidates of some rows (see ``FitFn``); it must return the same candidates,
        in the same order, whatever rows it is given
    x_score, y_score : (m, d), (m,) the judged half; x_other, y_other : (n, d), (n,) the other
    g_score, g_other : {inference: (m,) / (n,) pseudo-group ids}
    folds : (m,) fold ids of the judged rows (:func:`class_folds`)

    Returns
    -------
    The candidates fitted without fold 0 (the returned head when no refit follows), which
    judged rows each candidate gets right (K, m), and whether every fold's fit gave finite
    logits (K,) bool.
    """
    first: list[tuple[str, AutoCandidate]] | None = None
    correct: np.ndarray | None = None
    valid: np.ndarray | None = None
    for j in np.unique(folds):
        inside = folds == j
        pairs = fit(_without(folds, j, x_score, x_other), _without(folds, j, y_score, y_other),
                    {k: _without(folds, j, g_score[k], g_other[k]) for k in g_score})
        if first is None:
            first = pairs
            correct = np.zeros((len(pairs), len(y_score)), dtype=bool)
            valid = np.ones(len(pairs), dtype=bool)
        assert correct is not None and valid is not None and len(pairs) == len(first)
        for i, (_, cand) in enumerate(pairs):
            logits = cand.head.logits(x_score[inside])
            if not np.isfinite(logits).all():
                valid[i] = False
                continue
            correct[i, inside] = logits.argmax(axis=1) == y_score[inside]
    assert first is not None and correct is not None and valid is not None, "at least one fold is needed"
    return first, correct, valid
