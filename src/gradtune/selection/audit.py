"""Audit cells: pseudo-groups for *judging* a repair that do not read the judged rows'
ERM mistakes.

A label-free guard that scores the ERM head and a repair on pseudo-groups made from
the ERM head's own mistakes on the scored rows is rigged: the ERM head is wrong on
every row of its "minority" by construction, so any change looks like a gain. The
audit cells avoid that by cross-fitting. On one validation half, a per-class
logistic regression learns where in feature space the ERM head errs (the flag it is
fitted to is "the ERM head is wrong on this row"); on the *other* half the rows of
each class are split into the share ``q`` it predicts most likely to be wrong
(``q`` = the class's error rate on the fitting half) and the rest. The cells are then
regions of feature space fixed before the scored rows' labels are looked at, so every
head's accuracy on them is an unbiased estimate of its accuracy on that region.

Cell ids are ``2 * label + in_region`` (2C cells); a class whose fitting half has fewer
than ``min_rows`` flagged (or unflagged) rows gets no region (all its rows in cell
``2 * label``).

:func:`structure_auc` asks, before any repair, whether the ERM head's mistakes are a
shortcut's minority at all. Within each class, the rows the head gets wrong differ from
the rest along the head's own decision directions whatever their cause: a row on the
wrong side of the boundary is a mistake. A shortcut's minority differs along *other*
directions too (the shortcut's attribute, which the head reads only in part). So the
features are projected off a linear surrogate of the head's logits, a per-class
logistic regression learns the mistakes from what is left on one half, and its AUC on
the other half is the statistic: near 0.5 when the mistakes are class overlap or label
noise, well above it when they form a group the head has not fully encoded. That null
assumes Gaussian classes; with heavy-tailed coordinates a linear head errs on rows with
an extreme value, which the regression finds off the head's directions too.
``scale="rank"`` replaces each feature by its normal scores (per half) first, which
removes that route and leaves Gaussian features as they were. Normal scores in turn bend
heavy tails that are elliptical (one scale shared by a row's coordinates, where the
standardized test's null holds), so ``scale="both"`` reports the smaller AUC of the two.

Shapes: N fitting rows, M scored rows, d features, C classes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["class_folds", "region_cells", "cell_accuracies", "worst_cell_accuracy", "uncovered_classes", "worst_over_cell_sets",
           "normal_scores", "structure_auc", "structure_aucs", "structure_gate", "structure_gate_reason", "SCALES",
           "PROJECTIONS"]


def class_folds(y: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """(m,) fold ids in ``[0, n_folds)``, each label's rows dealt round-robin in a random order
    (folds stratified by class, or by group when ``y`` holds group ids).

    With one fold every id is 0 and nothing is drawn from ``rng``."""
    y = np.asarray(y)
    folds = np.zeros(len(y), dtype=np.int64)
    if int(n_folds) <= 1:
        return folds
    for k in np.unique(y):
        rows = np.flatnonzero(y == k)
        folds[rng.permutation(rows)] = np.arange(rows.size) % int(n_folds)
    return folds


def region_cells(x_fit: np.ndarray, y_fit: np.ndarray, flag_fit: np.ndarray, x_apply: np.ndarray,
                 y_apply: np.ndarray, n_classes: int, *, c: float = 1.0, min_rows: int = 5,
                 seed: int = 0, min_in: int = 0, min_class_rows: float = 0.0) -> np.ndarray:
    """Cells of the ``apply`` rows from a region model of ``flag_fit`` fitted on the ``fit`` rows.

    Parameters
    ----------
    x_fit : (N, d) features; y_fit : (N,) labels; flag_fit : (N,) bool (e.g. ERM head wrong)
    x_apply : (M, d) features; y_apply : (M,) labels
    n_classes : int
    c : float, default=1.0
        Inverse L2 strength of the per-class logistic regressions (standardized features).
    min_rows : int, default=5
    seed : int
        ``random_state`` of the solver (deterministic for lbfgs; kept for completeness).
    min_in : int, default=0
        Least number of a class's ``apply`` rows placed in its region (the highest scores),
        where the flag's rate would place fewer; only for a class with a region model and at
        least ``max(min_in, min_class_rows)`` apply rows (a rare class keeps the rate).
    min_class_rows : float, default=0.0

    Returns
    -------
    (M,) int64 cell ids ``2 * y + in_region``.
    """
    from sklearn.linear_model import LogisticRegression

    xf, xa = _standardized(x_fit, x_apply)
    flag_fit = np.asarray(flag_fit, dtype=bool)
    out = 2 * np.asarray(y_apply, dtype=np.int64)
    for k in range(int(n_classes)):
        fit_rows = y_fit == k
        apply_rows = np.flatnonzero(y_apply == k)
        n_flag = int(flag_fit[fit_rows].sum())
        if n_flag < min_rows or int(fit_rows.sum()) - n_flag < min_rows or apply_rows.size == 0:
            continue
        clf = LogisticRegression(C=float(c), max_iter=500, random_state=seed)
        clf.fit(xf[fit_rows], flag_fit[fit_rows])
        score = clf.decision_function(xa[apply_rows])
        q = n_flag / int(fit_rows.sum())
        n_in = int(round(q * apply_rows.size))
        if apply_rows.size >= max(int(min_in), float(min_class_rows)):
            n_in = max(n_in, int(min_in))
        if n_in == 0:
            continue
        top = np.argsort(-score, kind="stable")[:n_in]
        out[apply_rows[top]] += 1
    return out


def _standardized(x_fit: np.ndarray, x_other: np.ndarray, *, copy: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Float64 copies of (N, d) x_fit and (M, d) x_other, both standardized by x_fit's column
    mean and spread (a constant column keeps scale 1); one copy each, no temporaries
    (``copy=False``: float64 inputs are standardized in place)."""
    as64 = np.array if copy else np.asarray
    xf = as64(x_fit, dtype=np.float64)
    xo = as64(x_other, dtype=np.float64)
    mean = xf.mean(axis=0)
    scale = xf.std(axis=0)
    scale[scale == 0] = 1.0
    for x in (xf, xo):
        x -= mean
        x /= scale
    return xf, xo


def cell_accuracies(correct: np.ndarray, cells: np.ndarray, n_cells: int, min_rows: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy (K,), counts (K,)) per cell; cells with fewer than ``min_rows`` rows get NaN."""
    counts = np.bincount(cells, minlength=n_cells)
    hits = np.bincount(cells, weights=np.asarray(correct, dtype=np.float64), minlength=n_cells)
    acc = np.full(n_cells, np.nan)
    keep = counts >= max(int(min_rows), 1)
    acc[keep] = hits[keep] / counts[keep]
    return acc, counts


def worst_cell_accuracy(correct: np.ndarray, cells: np.ndarray, n_cells: int, min_rows: int
                        ) -> tuple[float, int]:
    """Lowest accuracy over the cells with at least ``min_rows`` rows, and that cell's size
    (all rows as one cell when none qualifies)."""
    acc, counts = cell_accuracies(correct, cells, n_cells, min_rows)
    if np.isnan(acc).all():
        return float(np.mean(correct)), int(len(correct))
    j = int(np.nanargmin(acc))
    return float(acc[j]), int(counts[j])


def worst_over_cell_sets(correct: np.ndarray, cell_sets: tuple[np.ndarray, ...], n_cells: int, min_rows: int
                         ) -> np.ndarray:
    """(K,) each head's lowest accuracy over the cells of every (m,) cell array in
    ``cell_sets`` (each as :func:`worst_cell_accuracy` counts them), from (K, m) ``correct``."""
    return np.array([min(worst_cell_accuracy(ok, cells, n_cells, min_rows)[0] for cells in cell_sets)
                     for ok in np.asarray(correct)], dtype=np.float64)


def uncovered_classes(cells: list[np.ndarray], n_classes: int, min_rows: int) -> list[tuple[int, int]]:
    """Classes whose region cell (``2 * y + 1``) holds fewer than ``min_rows`` rows in some
    (n,) cell array of ``cells``, each as (class, its smallest region count).

    Such a class's rows are judged as one cell: whatever a repair does to the rows the
    ERM head gets wrong there (a rare class's minority) cannot be seen."""
    least = np.min([np.bincount(np.asarray(c), minlength=2 * int(n_classes))[1::2] for c in cells], axis=0)
    return [(k, int(n)) for k, n in enumerate(least) if n < int(min_rows)]


def head_margins(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n,) the head's margin on each row's own class: its logit minus the largest other
    logit, from (n, C) ``logits`` and (n,) labels ``y`` (negative where the head errs)."""
    logits = np.asarray(logits, dtype=np.float64)
    rows = np.arange(len(logits))
    own = logits[rows, np.asarray(y)]
    other = logits.copy()
    other[rows, np.asarray(y)] = -np.inf
    return own - other.max(axis=1)


def pad_regions(cells: np.ndarray, y: np.ndarray, margins: np.ndarray, n_classes: int, min_rows: int,
                *, min_class_rows: float = 0.0) -> np.ndarray:
    """(n,) cells whose too-small region cells are filled up to ``min_rows`` rows.

    A class whose region cell (``2 * y + 1``) holds fewer than ``min_rows`` rows gets its
    rows of lowest ``margins`` outside the region added to it, so that the rows a repair
    would lose first in that class (its few mistakes and the correct rows nearest another
    class) are judged as a cell of their own instead of among all the class's rows. A class
    with fewer than ``min_rows`` rows in all keeps its rows as they are.
    """
    out = np.array(cells, dtype=np.int64, copy=True)
    y = np.asarray(y)
    margins = np.asarray(margins, dtype=np.float64)
    for k in range(int(n_classes)):
        rows = np.flatnonzero(y == k)
        inside = out[rows] % 2 == 1
        need = int(min_rows) - int(inside.sum())
        if need <= 0 or rows.size < max(int(min_rows), float(min_class_rows)):
            continue
        outside = rows[~inside]
        take = outside[np.argsort(margins[outside], kind="stable")[:need]]
        out[take] += 1
    return out


def _block_scores(xt: np.ndarray) -> np.ndarray:
    """Normal scores of each row of a (b, N) block (one feature per row, values contiguous)."""
    from scipy.special import ndtri

    n = xt.shape[1]
    order = np.argsort(xt, axis=1)
    s = np.take_along_axis(xt, order, axis=1)
    ends = np.ones(s.shape, dtype=bool)                     # last sorted position of each run of ties
    np.not_equal(s[:, 1:], s[:, :-1], out=ends[:, :-1])
    del s
    pos = np.arange(n, dtype=np.float64)
    last = np.minimum.accumulate(np.where(ends, pos, n - 1.0)[:, ::-1], axis=1)[:, ::-1]
    starts = np.empty_like(ends)
    starts[:, 0] = True
    starts[:, 1:] = ends[:, :-1]
    rank = np.maximum.accumulate(np.where(starts, pos, 0.0), axis=1)   # first position of the run
    rank += last
    rank += 1.0
    rank /= 2.0 * n                                          # (mean 1-based rank of the run - 1/2) / N
    out = np.empty(xt.shape, dtype=np.float64)
    np.put_along_axis(out, order, rank, axis=1)
    return ndtri(out, out=out)


def normal_scores(x: np.ndarray, *, block: int = 256) -> np.ndarray:
    """(N, d) float64 normal scores of each column of (N, d) ``x``: ``Phi^-1((rank - 1/2) / N)``,
    tied values sharing their mean rank (a constant column becomes zeros); ``block`` columns
    at a time."""
    x = np.asarray(x)
    out = np.empty(x.shape, dtype=np.float64)
    if x.shape[0] == 0:
        return out
    for j in range(0, x.shape[1], int(block)):
        out[:, j:j + block] = _block_scores(np.ascontiguousarray(x[:, j:j + block].T)).T
    return out


def structure_auc(x_a: np.ndarray, y_a: np.ndarray, flag_a: np.ndarray, logits_a: np.ndarray,
                  x_b: np.ndarray, y_b: np.ndarray, flag_b: np.ndarray, n_classes: int, *,
                  c: float = 1.0, min_rows: int = 5, scale: str = "standard") -> float | None:
    """Cross-fitted AUC of the mistakes predicted from features off the head's directions.

    Parameters
    ----------
    x_a, x_b : (N, d), (M, d) features of the two halves
    y_a, y_b : (N,), (M,) labels
    flag_a, flag_b : (N,), (M,) bool, e.g. the ERM head is wrong on the row
    logits_a : (N, C) the head's logits on half a (the linear surrogate is fitted on them)
    n_classes : int
    c : float, default=1.0
        Inverse L2 strength of the per-class logistic regressions.
    min_rows : int, default=5
        A class counts when both halves hold at least this many flagged and unflagged rows.
    scale : {"standard", "rank", "both"}, default="standard"
        How the features are put on one scale: standardized by half a's mean and spread, or
        each half's columns replaced by their normal scores (:func:`normal_scores`) first, so
        that a few extreme values (heavy tails) cannot make the mistakes predictable; "both":
        the smaller of the two AUCs.

    Returns
    -------
    The mean AUC over classes and both directions (a -> b, b -> a), weighted by the
    scored half's flagged rows; None when no class counts.
    """
    return structure_aucs(x_a, y_a, logits_a, x_b, y_b, [(flag_a, flag_b)], n_classes, c=c,
                          min_rows=min_rows, scale=scale)[0]


SCALES = ("standard", "rank", "both")
PROJECTIONS = ("directions", "regress", "both")


def _smaller(a: float | None, b: float | None) -> float | None:
    """The smaller of two AUCs; None when either scale had nothing to test."""
    return None if a is None or b is None else min(a, b)


def structure_aucs(x_a: np.ndarray, y_a: np.ndarray, logits_a: np.ndarray, x_b: np.ndarray,
                   y_b: np.ndarray, flags: list[tuple[np.ndarray, np.ndarray]], n_classes: int, *,
                   c: float = 1.0, min_rows: int = 5, scale: str = "standard", projection: str = "directions",
                   logits_b: np.ndarray | None = None) -> list[float | None]:
    """:func:`structure_auc` of several flag pairs ``[(flag_a (N,), flag_b (M,)), ...]`` with
    one standardization and projection of the features; one AUC (or None) per pair.

    ``projection="directions"`` removes the head's logit directions from the features
    (orthogonally); ``"regress"`` removes, within each class, the features' least-squares
    regression on the logits (``logits_b`` (M, C) needed), fitted on the training half of each
    direction (:func:`_regress_out`); ``"both"``: the smaller AUC of the two."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    if projection != "directions" and logits_b is None:
        raise ValueError(f"projection={projection!r} needs logits_b, the head's logits on half b")
    if projection == "both":
        pairs = zip(*(structure_aucs(x_a, y_a, logits_a, x_b, y_b, flags, n_classes, c=c, min_rows=min_rows,
                                     scale=scale, projection=one, logits_b=logits_b)
                      for one in ("directions", "regress")), strict=True)
        return [_smaller(a, b) for a, b in pairs]
    if scale == "both":
        pairs = zip(*(structure_aucs(x_a, y_a, logits_a, x_b, y_b, flags, n_classes, c=c, min_rows=min_rows,
                                     scale=one, projection=projection, logits_b=logits_b)
                      for one in ("standard", "rank")), strict=True)
        return [_smaller(a, b) for a, b in pairs]
    if scale == "rank":                    # fresh float64 arrays, standardized in place
        pa, pb = _standardized(normal_scores(x_a), normal_scores(x_b), copy=False)
    else:
        pa, pb = _standardized(x_a, x_b)   # float64 copies, worked on in place from here
    if projection == "regress":
        assert logits_b is not None
        return _regressed_aucs(pa, y_a, np.asarray(logits_a, dtype=np.float64), pb, y_b,
                               np.asarray(logits_b, dtype=np.float64), flags, n_classes, c, min_rows)
    # the head's logit directions in these features: least squares on centred rows and logits
    # (the intercept), centred over classes too (softmax ignores a shift common to all logits)
    z = np.asarray(logits_a, dtype=np.float64)
    coef, *_ = np.linalg.lstsq(pa, z - z.mean(axis=0), rcond=None)
    b = coef - coef.mean(axis=1, keepdims=True)                   # (d, C)
    u, sv, _ = np.linalg.svd(b, full_matrices=False)
    q = u[:, sv > sv.max(initial=0.0) * 1e-8]                     # (d, r) orthonormal basis
    pa -= (pa @ q) @ q.T
    pb -= (pb @ q) @ q.T
    out: list[float | None] = []
    for flag_a, flag_b in flags:
        fa, fb = np.asarray(flag_a, dtype=bool), np.asarray(flag_b, dtype=bool)
        got = []
        for xf, yf, ff, xs, ys, fs in ((pa, y_a, fa, pb, y_b, fb), (pb, y_b, fb, pa, y_a, fa)):
            for k in range(int(n_classes)):
                mf, ms = yf == k, ys == k
                got.append(_probe_auc(xf, mf, ff[mf], xs, ms, fs[ms], c, min_rows))
        out.append(_weighted_auc(got))
    return out


def _probe_auc(x_fit: np.ndarray, rows_fit: np.ndarray | slice, flag_fit: np.ndarray, x_score: np.ndarray,
               rows_score: np.ndarray | slice, flag_score: np.ndarray, c: float, min_rows: int,
               ) -> tuple[float, int] | None:
    """(AUC on the scored rows, their flagged count) of a logistic regression of ``flag_fit`` on
    ``x_fit[rows_fit]``, read on ``x_score[rows_score]``; None when either side has fewer than
    ``min_rows`` flagged or unflagged rows (the rows are sliced only when the probe runs)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    if min(flag_fit.sum(), (~flag_fit).sum(), flag_score.sum(), (~flag_score).sum()) < min_rows:
        return None
    clf = LogisticRegression(C=float(c), max_iter=500).fit(x_fit[rows_fit], flag_fit)
    return float(roc_auc_score(flag_score, clf.decision_function(x_score[rows_score]))), int(flag_score.sum())


def _weighted_auc(got: list[tuple[float, int] | None]) -> float | None:
    """The probes' AUCs averaged with their flagged counts as weights; None when none ran."""
    ran = [g for g in got if g is not None]
    return float(np.average([a for a, _ in ran], weights=[w for _, w in ran])) if ran else None


def _regress_out(x_fit: np.ndarray, z_fit: np.ndarray, x_apply: np.ndarray, z_apply: np.ndarray) -> np.ndarray:
    """x_apply (m, d) minus its least-squares prediction from [1, z_apply (m, C)], the regression
    fitted on (x_fit (n, d), z_fit (n, C)). For Gaussian rows of one class (any covariance) this
    residual is independent of the logits, so it cannot predict anything the logits decide."""
    design = np.column_stack([np.ones(len(z_fit)), z_fit])
    coef, *_ = np.linalg.lstsq(design, x_fit, rcond=None)                  # (1 + C, d)
    return x_apply - np.column_stack([np.ones(len(z_apply)), z_apply]) @ coef


def _regressed_aucs(pa: np.ndarray, y_a: np.ndarray, za: np.ndarray, pb: np.ndarray, y_b: np.ndarray,
                    zb: np.ndarray, flags: list[tuple[np.ndarray, np.ndarray]], n_classes: int, c: float,
                    min_rows: int) -> list[float | None]:
    """The per-class AUCs of :func:`structure_aucs` with ``projection="regress"``: in each direction
    (fit on half a, score half b, and back) and class, both halves' rows of the class lose their
    regression on the logits fitted on the fitting half's rows of the class."""
    za, zb = za - za.mean(axis=1, keepdims=True), zb - zb.mean(axis=1, keepdims=True)   # softmax's shift
    masks = [(y_a == k, y_b == k) for k in range(int(n_classes))]
    Pair = tuple[np.ndarray, np.ndarray]
    sides: list[tuple[Pair, Pair] | None] = []   # per class: (fit rows, scored rows) residuals, a -> b and b -> a
    for ma, mb in masks:
        if min(int(ma.sum()), int(mb.sum())) < 2:
            sides.append(None)
            continue
        sides.append(((_regress_out(pa[ma], za[ma], pa[ma], za[ma]), _regress_out(pa[ma], za[ma], pb[mb], zb[mb])),
                      (_regress_out(pb[mb], zb[mb], pb[mb], zb[mb]), _regress_out(pb[mb], zb[mb], pa[ma], za[ma]))))
    out: list[float | None] = []
    every = slice(None)
    for flag_a, flag_b in flags:
        fa, fb = np.asarray(flag_a, dtype=bool), np.asarray(flag_b, dtype=bool)
        got = [_probe_auc(xf, every, ff, xs, every, fs, c, min_rows)
               for (ma, mb), side in zip(masks, sides, strict=True) if side is not None
               for (xf, xs), ff, fs in ((side[0], fa[ma], fb[mb]), (side[1], fb[mb], fa[ma]))]
        out.append(_weighted_auc(got))
    return out


def structure_gate_reason(auc: float | None, twin_auc: float | None, min_auc: float, min_twin_auc: float,
                          on: str = "") -> str | None:
    """None when the head's mistakes (``auc``) or the inferred minority (``twin_auc``) clear
    their least structure AUC; otherwise why a repair should not be attempted (``on``: the
    features the AUCs were read on, named in the reason)."""
    if (auc is not None and auc >= min_auc) or (twin_auc is not None and twin_auc >= min_twin_auc):
        return None
    found = ("too few mistakes in every class to test" if auc is None else
             f"structure AUC {auc:.2f} < min_structure_auc={min_auc:g}")
    if twin_auc is not None:
        found += f"; the twins' minority: {twin_auc:.2f} < min_twin_auc={min_twin_auc:g}"
    if on and auc is not None:
        found += f"; on {on}"
    return (f"the ERM head's mistakes differ from its correct rows only along its own decision directions "
            f"({found}): they look like class overlap or label noise, not a shortcut's minority")


def structure_gate(x_a: np.ndarray, y_a: np.ndarray, logits_a: np.ndarray, x_b: np.ndarray, y_b: np.ndarray,
                   flags: list[tuple[np.ndarray, np.ndarray]], n_classes: int, *, scale: str, min_auc: float,
                   min_twin_auc: float, projection: str = "directions", logits_b: np.ndarray | None = None,
                   ) -> tuple[float | None, float | None, str | None]:
    """Is there a shortcut's minority to repair? (AUC of the mistakes ``flags[0]``, AUC of the
    inferred minority ``flags[1]`` or None, why the gate is closed or None when it is open).

    :func:`structure_aucs` on ``scale``; with ``"both"`` the normal scores are tested first and
    the standardized features only when those open the gate (the smaller AUC decides, so a gate
    closed on one scale stays closed; the AUCs returned are those that decided). ``projection``
    works the same way: with ``"both"`` the head's directions are removed first and the logits'
    regression (``logits_b`` (M, C) needed) only while the gate is still open."""
    def read(one: str, proj: str) -> list[float | None]:
        got = structure_aucs(x_a, y_a, logits_a, x_b, y_b, flags, n_classes, scale=one, projection=proj,
                             logits_b=logits_b)
        return got + [None] * (2 - len(got))

    scales = ("rank", "standard") if scale == "both" else (scale,)
    projections = ("directions", "regress") if projection == "both" else (projection,)
    names = {"standard": "standardized features", "rank": "normal scores"}
    aucs: list[float | None] = []
    reason = None
    for i, (proj, one) in enumerate((p, s) for p in projections for s in scales):
        got = read(one, proj)
        aucs = got if i == 0 else [_smaller(a, b) for a, b in zip(aucs, got, strict=True)]
        on = names[one] if i == 0 else "the smallest over " + " and ".join([names[s] for s in scales]) + (
            ", with the head's directions and with the logits' regression removed" if i >= len(scales) else "")
        reason = structure_gate_reason(aucs[0], aucs[1], min_auc, min_twin_auc, on)
        if reason is not None:   # the smallest AUC decides: a gate closed on one reading stays closed
            break
    return aucs[0], aucs[1], reason
