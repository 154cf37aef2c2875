"""Audit cells against an independent recomputation with scikit-learn, and cell accuracies
counted by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from gradtune.selection.audit import (
    cell_accuracies,
    region_cells,
    uncovered_classes,
    worst_cell_accuracy,
)


def _sklearn_cells(x_fit, y_fit, flag, x_app, y_app, least: dict[int, int] | None = None) -> np.ndarray:
    """Region cells recomputed with scikit-learn: per class, the flag's rate of the apply rows
    with the highest logistic-regression scores, raised to ``least[k]`` rows where given."""
    scaler = StandardScaler().fit(x_fit)
    want = 2 * y_app
    for k in (0, 1):
        clf = LogisticRegression(C=1.0, max_iter=500).fit(scaler.transform(x_fit[y_fit == k]), flag[y_fit == k])
        rows = np.flatnonzero(y_app == k)
        n_in = int(round(flag[y_fit == k].mean() * rows.size))
        if least and k in least:
            assert n_in < least[k]            # the raise is what is tested
            n_in = least[k]
        score = clf.decision_function(scaler.transform(x_app[rows]))
        want[rows[np.argsort(-score, kind="stable")[:n_in]]] += 1
    return want


def test_region_cells_match_a_per_class_logistic_regression() -> None:
    rng = np.random.default_rng(0)
    x_fit = rng.normal(size=(400, 5))
    y_fit = rng.integers(0, 2, 400)
    flag = x_fit[:, 1] + 0.3 * rng.normal(size=400) > 1.0      # errors live where x1 is large
    x_app = rng.normal(size=(300, 5))
    y_app = rng.integers(0, 2, 300)
    got = region_cells(x_fit, y_fit, flag, x_app, y_app, 2)
    np.testing.assert_array_equal(got, _sklearn_cells(x_fit, y_fit, flag, x_app, y_app))
    # the region is where x1 is large
    assert x_app[got % 2 == 1, 1].mean() > x_app[got % 2 == 0, 1].mean() + 1.0


def test_region_cells_fill_a_small_region_with_the_models_top_rows() -> None:
    rng = np.random.default_rng(2)
    x_fit = rng.normal(size=(400, 5))
    y_fit = np.repeat([0, 1], 200)
    flag = np.zeros(400, dtype=bool)             # each class's 6 rows of largest x1 (3%)
    for k in (0, 1):
        rows = np.flatnonzero(y_fit == k)
        flag[rows[np.argsort(-x_fit[rows, 1])[:6]]] = True
    x_app = rng.normal(size=(300, 5))
    y_app = np.array([0] * 250 + [1] * 50)
    got = region_cells(x_fit, y_fit, flag, x_app, y_app, 2, min_in=12, min_class_rows=60)
    # class 0 (250 rows >= 60) gets at least 12; class 1 (50 rows) keeps its rate
    np.testing.assert_array_equal(got, _sklearn_cells(x_fit, y_fit, flag, x_app, y_app, least={0: 12}))


def test_a_class_with_too_few_flagged_rows_gets_no_region() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 3))
    y = np.repeat([0, 1], 50)
    flag = np.zeros(100, dtype=bool)
    flag[:3] = True                       # 3 flagged rows in class 0, none in class 1
    cells = region_cells(x, y, flag, x, y, 2, min_rows=5)
    np.testing.assert_array_equal(cells, 2 * y)


def test_uncovered_classes_by_hand() -> None:
    a = np.array([0, 1, 1, 2, 3, 3, 3, 4])          # class 0: 2 region rows, 1: 3, 2: none
    b = np.array([1, 1, 1, 3, 3, 5, 5, 5])          # class 0: 3, 1: 2, 2: 3
    assert uncovered_classes([a, b], 3, 3) == [(0, 2), (1, 2), (2, 0)]
    assert uncovered_classes([a, b], 3, 2) == [(2, 0)]
    assert uncovered_classes([b], 3, 2) == []


def test_cell_accuracies_by_hand() -> None:
    correct = np.array([1, 1, 0, 1, 0, 0, 1], dtype=bool)
    cells = np.array([0, 0, 1, 1, 2, 3, 3])
    acc, counts = cell_accuracies(correct, cells, 4, min_rows=2)
    np.testing.assert_array_equal(counts, [2, 2, 1, 2])
    np.testing.assert_allclose(acc, [1.0, 0.5, np.nan, 0.5])
    assert worst_cell_accuracy(correct, cells, 4, 2) == (0.5, 2)
    assert worst_cell_accuracy(correct, cells, 4, 1) == (0.0, 1)
    # no cell large enough: all rows as one cell
    assert worst_cell_accuracy(correct, cells, 4, 5) == (4 / 7, 7)


def _rows(seed: int, shortcut: float, n: int = 1200):
    """Rows with a core coordinate (the labels follow it), a shortcut coordinate that agrees
    with the class on 90% of rows (scaled by ``shortcut``), and noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    spur = np.where(rng.random(n) < 0.9, y, 1 - y)
    x = rng.normal(size=(n, 6))
    x[:, 0] += 1.2 * (2 * y - 1)
    x[:, 1] += shortcut * (2 * spur - 1)
    return x, y, spur


def _head(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.stack([-(x @ w), x @ w], axis=1) / 2


def test_structure_auc_tells_a_shortcut_minority_from_overlap() -> None:
    from gradtune.selection.audit import structure_auc

    # no shortcut: the head reads the core, its mistakes are class overlap along its own direction
    xa, ya, _ = _rows(0, shortcut=0.0)
    xb, yb, _ = _rows(1, shortcut=0.0)
    w = np.array([1.0, 0, 0, 0, 0, 0])
    la, lb = _head(xa, w), _head(xb, w)
    overlap = structure_auc(xa, ya, la.argmax(1) != ya, la, xb, yb, lb.argmax(1) != yb, 2)
    # a shortcut the head leans on: its mistakes are the minority, set apart along the shortcut
    # coordinate beyond what the head's direction shows
    xa, ya, sa = _rows(0, shortcut=2.5)
    xb, yb, sb = _rows(1, shortcut=2.5)
    w = np.array([1.0, 1.0, 0, 0, 0, 0])
    la, lb = _head(xa, w), _head(xb, w)
    shortcut = structure_auc(xa, ya, la.argmax(1) != ya, la, xb, yb, lb.argmax(1) != yb, 2)
    assert overlap is not None and shortcut is not None
    assert abs(overlap - 0.5) < 0.08, overlap
    assert shortcut > 0.75, shortcut
    # nothing to test when a class has too few flagged rows
    none = np.zeros(len(ya), dtype=bool)
    assert structure_auc(xa, ya, none, la, xb, yb, none, 2) is None


def _reference_auc(xa, ya, fa, la, xb, yb, fb) -> float:
    """Slow reference: standardize by half a, remove the least-squares logit directions,
    one logistic regression per class and direction, AUCs weighted by flagged rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    mu, sd = xa.mean(0), xa.std(0)
    pa, pb = (xa - mu) / sd, (xb - mu) / sd
    z = la - la.mean(0)
    coef = np.linalg.pinv(pa) @ z
    coef -= coef.mean(1, keepdims=True)
    q, _ = np.linalg.qr(coef)
    q = q[:, : np.linalg.matrix_rank(coef)]
    pa, pb = pa - pa @ q @ q.T, pb - pb @ q @ q.T
    aucs, wts = [], []
    for xf, yf, ff, xs, ys, fs in ((pa, ya, fa, pb, yb, fb), (pb, yb, fb, pa, ya, fa)):
        for k in (0, 1):
            clf = LogisticRegression(C=1.0, max_iter=500).fit(xf[yf == k], ff[yf == k])
            aucs.append(roc_auc_score(fs[ys == k], clf.decision_function(xs[ys == k])))
            wts.append(fs[ys == k].sum())
    return float(np.average(aucs, weights=wts))


def _shortcut_halves():
    """Two halves of the 2.5-shortcut rows, a head leaning on the shortcut, and the flag pairs
    (its mistakes, the true minority)."""
    xa, ya, sa = _rows(0, shortcut=2.5)
    xb, yb, sb = _rows(1, shortcut=2.5)
    w = np.array([1.0, 1.0, 0, 0, 0, 0])
    la, lb = _head(xa, w), _head(xb, w)
    pairs = [(la.argmax(1) != ya, lb.argmax(1) != yb), (np.asarray(sa) != ya, np.asarray(sb) != yb)]
    return xa, ya, la, xb, yb, lb, pairs


def test_structure_aucs_matches_a_slow_reference_per_flag_pair() -> None:
    from gradtune.selection.audit import structure_aucs

    xa, ya, la, xb, yb, lb, pairs = _shortcut_halves()
    pairs.append((np.zeros(len(ya), dtype=bool), np.zeros(len(yb), dtype=bool)))
    got = structure_aucs(xa, ya, la, xb, yb, pairs, 2)
    assert got[2] is None                                  # no flagged rows: nothing to test
    for (fa, fb), g in zip(pairs[:2], got[:2], strict=True):
        assert g == pytest.approx(_reference_auc(xa, ya, fa, la, xb, yb, fb), abs=1e-6)


def test_normal_scores_by_hand() -> None:
    from statistics import NormalDist

    from gradtune.selection.audit import normal_scores

    x = np.array([[3.0, 7.0], [1.0, 7.0], [2.0, 7.0], [2.0, 7.0]])
    got = normal_scores(x)
    # column 0: ranks 4, 1, 2.5, 2.5 of 4 -> (rank - 1/2) / 4; a constant column is all ties -> 0
    inv = NormalDist().inv_cdf
    want0 = [inv(0.875), inv(0.125), 0.0, 0.0]
    assert got[:, 0] == pytest.approx(want0, abs=1e-12)
    assert got[:, 1] == pytest.approx([0.0] * 4, abs=1e-12)
    # many ties, columns dealt in blocks: scipy's mean ranks as the reference
    from scipy.stats import norm, rankdata

    x = np.random.default_rng(0).integers(0, 6, size=(300, 11)).astype(np.float32)
    want = norm.ppf((rankdata(x, axis=0, method="average") - 0.5) / 300)
    assert normal_scores(x, block=4) == pytest.approx(want, abs=1e-9)


def test_rank_scale_ignores_monotone_feature_maps() -> None:
    from gradtune.selection.audit import structure_aucs

    xa, ya, sa = _rows(0, shortcut=2.5)
    xb, yb, sb = _rows(1, shortcut=2.5)
    w = np.array([1.0, 1.0, 0, 0, 0, 0])
    la, lb = _head(xa, w), _head(xb, w)
    pairs = [(la.argmax(1) != ya, lb.argmax(1) != yb), (np.asarray(sa) != ya, np.asarray(sb) != yb)]
    plain = structure_aucs(xa, ya, la, xb, yb, pairs, 2, scale="rank")
    standard = structure_aucs(xa, ya, la, xb, yb, pairs, 2)
    both = structure_aucs(xa, ya, la, xb, yb, pairs + [(np.zeros(len(ya), bool), np.zeros(len(yb), bool))], 2,
                          scale="both")
    assert both == [min(p, s) for p, s in zip(plain, standard, strict=True)] + [None]
    # a strictly increasing map of every column leaves each column's ranks, so the normal scores,
    # unchanged: only the head's logits (given) tie the test to the raw values
    mapped = structure_aucs(np.exp(xa), ya, la, np.exp(xb), yb, pairs, 2, scale="rank")
    assert mapped == pytest.approx(plain, abs=1e-9)
    assert plain[1] > 0.75          # the shortcut's minority is still found on the rank scale
    with pytest.raises(ValueError, match="scale must be one of"):
        structure_aucs(xa, ya, la, xb, yb, pairs, 2, scale="quantile")


def test_rank_scale_keeps_the_null_on_heavy_tailed_classes() -> None:
    """Two classes, Student-t (3 degrees of freedom) noise on every coordinate, no shortcut: a
    linear head errs most on rows with an extreme coordinate it weights heavily, which the
    standardized test partly finds off the head's direction (the Gaussian null's AUC of 0.5 is
    exceeded); on normal scores the mistakes look like overlap again. Two draws."""
    from gradtune.selection.audit import structure_auc

    standard, rank = [], []
    d = 128
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        means = np.linalg.qr(rng.normal(size=(d, 2)))[0].T * 1.4      # (2, d) class means

        def rows(m: int, rng: np.random.Generator = rng, means: np.ndarray = means
                 ) -> tuple[np.ndarray, np.ndarray]:
            y = rng.integers(0, 2, m)
            return rng.standard_t(3, size=(m, d)) / np.sqrt(3.0) + means[y], y

        xt, yt = rows(8000)
        clf = LogisticRegression(C=1.0, max_iter=2000).fit(xt, yt)
        (xa, ya), (xb, yb) = rows(4000), rows(4000)
        la, lb = (np.stack([-clf.decision_function(x), clf.decision_function(x)], 1) / 2 for x in (xa, xb))
        fa, fb = la.argmax(1) != ya, lb.argmax(1) != yb
        standard.append(structure_auc(xa, ya, fa, la, xb, yb, fb, 2))
        rank.append(structure_auc(xa, ya, fa, la, xb, yb, fb, 2, scale="rank"))
        assert structure_auc(xa, ya, fa, la, xb, yb, fb, 2, scale="both") == min(standard[-1], rank[-1])
    assert np.mean(standard) > 0.54, standard                 # the Gaussian null fails on these rows ...
    assert all(abs(r - 0.5) < 0.03 for r in rank), rank      # ... and holds on their normal scores


def test_structure_gate_reason_by_hand() -> None:
    from gradtune.selection.audit import structure_gate_reason

    assert structure_gate_reason(0.61, 0.2, 0.6, 0.7) is None        # the mistakes route
    assert structure_gate_reason(0.50, 0.71, 0.6, 0.7) is None       # the twins' route
    kept = structure_gate_reason(0.55, 0.69, 0.6, 0.7)
    assert kept is not None and "structure AUC 0.55 < min_structure_auc=0.6" in kept and "0.69 < min_twin_auc" in kept
    none = structure_gate_reason(None, None, 0.6, 0.7)
    assert none is not None and "too few mistakes" in none and "twins" not in none


def test_structure_gate_reads_the_standardized_test_only_when_normal_scores_open_it(monkeypatch) -> None:
    from gradtune.selection import audit

    xa, ya, sa = _rows(0, shortcut=2.5)
    xb, yb, sb = _rows(1, shortcut=2.5)
    w = np.array([1.0, 1.0, 0, 0, 0, 0])
    la, lb = _head(xa, w), _head(xb, w)
    flags = [(la.argmax(1) != ya, lb.argmax(1) != yb), (np.asarray(sa) != ya, np.asarray(sb) != yb)]
    rank = audit.structure_aucs(xa, ya, la, xb, yb, flags, 2, scale="rank")
    standard = audit.structure_aucs(xa, ya, la, xb, yb, flags, 2)
    calls: list[str] = []
    real = audit.structure_aucs

    def counted(*a, **k):
        calls.append(k["scale"])
        return real(*a, **k)

    monkeypatch.setattr(audit, "structure_aucs", counted)
    # open on normal scores: both scales read, the smaller AUC decides
    got = audit.structure_gate(xa, ya, la, xb, yb, flags, 2, scale="both", min_auc=0.6, min_twin_auc=0.7)
    assert calls == ["rank", "standard"] and got[2] is None
    assert got[:2] == (min(rank[0], standard[0]), min(rank[1], standard[1]))
    # closed on normal scores: the standardized test is not run, the reason names their AUCs
    calls.clear()
    got = audit.structure_gate(xa, ya, la, xb, yb, flags, 2, scale="both", min_auc=0.99, min_twin_auc=0.99)
    assert calls == ["rank"] and got[:2] == (rank[0], rank[1]) and "min_structure_auc=0.99" in got[2]
    assert got[2].endswith("on normal scores): they look like class overlap or label noise, not a shortcut's minority")
    # one flag pair: no twins' AUC
    calls.clear()
    got = audit.structure_gate(xa, ya, la, xb, yb, flags[:1], 2, scale="standard", min_auc=0.6, min_twin_auc=0.7)
    assert calls == ["standard"] and got[1] is None and got[0] == standard[0]


def _correlated_control(seed: int, d: int = 64, n: int = 4000):
    """Two Gaussian classes with one shared, strongly correlated noise covariance (no shortcut),
    a regularized logistic head fitted on the first half; the two halves scored."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d) + 0.3 * np.eye(d)
    z = rng.normal(size=(n, d)) @ mix.T
    z /= z.std(axis=0)
    cov = np.cov(z.T)
    mu = rng.normal(size=d)
    mu *= 1.6 / np.sqrt(mu @ np.linalg.solve(cov, mu))        # Mahalanobis distance 1.6 between classes
    y = rng.integers(0, 2, n)
    x = z + np.where(y[:, None] == 1, mu, -mu) / 2
    clf = LogisticRegression(max_iter=3000).fit(x[: n // 2], y[: n // 2])
    logits = np.stack([-clf.decision_function(x), clf.decision_function(x)], 1) / 2
    a, b = slice(n // 2, 3 * n // 4), slice(3 * n // 4, n)
    return x[a], y[a], logits[a], x[b], y[b], logits[b]


def test_regress_projection_keeps_the_null_under_correlated_noise() -> None:
    """Removing the head's directions orthogonally leaves what the other, correlated coordinates
    say about the logit, so a no-shortcut control's mistakes read as structure; removing the
    features' regression on the logits does not. Two draws."""
    from gradtune.selection.audit import structure_aucs

    directions, regress = [], []
    for seed in (0, 1):
        xa, ya, la, xb, yb, lb = _correlated_control(seed)
        flags = [(la.argmax(1) != ya, lb.argmax(1) != yb)]
        directions.append(structure_aucs(xa, ya, la, xb, yb, flags, 2)[0])
        regress.append(structure_aucs(xa, ya, la, xb, yb, flags, 2, projection="regress", logits_b=lb)[0])
    assert min(directions) > 0.65, directions                # the directions' null fails here ...
    assert all(abs(r - 0.5) < 0.04 for r in regress), regress  # ... the regression's holds


def _reference_regress_auc(xa, ya, la, xb, yb, lb, fa, fb) -> float:
    """Slow reference of projection='regress': standardize by half a, and per direction and class
    subtract the least-squares fit of the features on [1, centred logits] of the fitting half."""
    from sklearn.metrics import roc_auc_score

    mu, sd = xa.mean(0), xa.std(0)
    pa, pb = (xa - mu) / sd, (xb - mu) / sd
    za, zb = la - la.mean(1, keepdims=True), lb - lb.mean(1, keepdims=True)
    aucs, wts = [], []
    for xf, zf, yf, ff, xs, zs, ys, fs in ((pa, za, ya, fa, pb, zb, yb, fb), (pb, zb, yb, fb, pa, za, ya, fa)):
        for k in (0, 1):
            mf, ms = yf == k, ys == k
            design = np.column_stack([np.ones(mf.sum()), zf[mf]])
            coef = np.linalg.pinv(design) @ xf[mf]
            rf = xf[mf] - design @ coef
            rs = xs[ms] - np.column_stack([np.ones(ms.sum()), zs[ms]]) @ coef
            clf = LogisticRegression(C=1.0, max_iter=500).fit(rf, ff[mf])
            aucs.append(roc_auc_score(fs[ms], clf.decision_function(rs)))
            wts.append(fs[ms].sum())
    return float(np.average(aucs, weights=wts))


def test_regress_projection_matches_a_slow_reference_and_keeps_a_shortcut() -> None:
    from gradtune.selection.audit import structure_aucs

    xa, ya, la, xb, yb, lb, pairs = _shortcut_halves()
    got = structure_aucs(xa, ya, la, xb, yb, pairs, 2, projection="regress", logits_b=lb)
    for (fa, fb), g in zip(pairs, got, strict=True):
        assert g == pytest.approx(_reference_regress_auc(xa, ya, la, xb, yb, lb, fa, fb), abs=1e-6)
    assert got[0] > 0.75 and got[1] > 0.75, got             # the minority still stands apart
    with pytest.raises(ValueError, match="logits_b"):
        structure_aucs(xa, ya, la, xb, yb, pairs, 2, projection="regress")
    with pytest.raises(ValueError, match="projection"):
        structure_aucs(xa, ya, la, xb, yb, pairs, 2, projection="whiten", logits_b=lb)


def test_structure_gate_with_both_projections_closes_a_correlated_control() -> None:
    """The head's directions open the gate on a correlated-noise control; with both projections
    the regression is read too and its smaller AUC closes it; the AUC returned is the minimum."""
    from gradtune.selection.audit import structure_aucs, structure_gate

    xa, ya, la, xb, yb, lb = _correlated_control(0)
    flags = [(la.argmax(1) != ya, lb.argmax(1) != yb)]
    kw = dict(scale="standard", min_auc=0.6, min_twin_auc=0.7)
    auc, _, reason = structure_gate(xa, ya, la, xb, yb, flags, 2, **kw)
    assert reason is None and auc > 0.6                     # open on the directions alone
    auc2, _, reason2 = structure_gate(xa, ya, la, xb, yb, flags, 2, projection="both", logits_b=lb, **kw)
    want = min(structure_aucs(xa, ya, la, xb, yb, flags, 2, projection=p, logits_b=lb)[0]
               for p in ("directions", "regress"))
    assert auc2 == pytest.approx(want) and reason2 is not None
    assert "logits' regression removed" in reason2


def test_head_margins_against_a_hand_count() -> None:
    from gradtune.selection.audit import head_margins

    logits = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0], [1.0, 1.0, 0.0]])
    y = np.array([0, 1, 2])
    # own logit minus the largest other: 2 - 0.5, 1 - 3, 0 - 1
    np.testing.assert_allclose(head_margins(logits, y), [1.5, -2.0, -1.0])


def test_pad_regions_fills_a_small_region_with_the_least_margin_rows() -> None:
    from gradtune.selection.audit import pad_regions

    # class 0: 8 rows, region {0, 1}; class 1: 6 rows, region {8, 9, 10, 11} (already 4 >= 4)
    y = np.array([0] * 8 + [1] * 6)
    cells = 2 * y
    cells[[0, 1, 8, 9, 10, 11]] += 1
    margins = np.array([-1.0, -0.5, 3.0, 0.2, 5.0, 0.1, 0.3, 2.0, -2.0, -1.0, 0.0, 0.5, 0.05, 9.0])
    out = pad_regions(cells, y, margins, 2, 4)
    want = cells.copy()
    want[[5, 3]] += 1            # class 0's two least-margin rows outside its region: 0.1, then 0.2
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(cells, 2 * y + np.isin(np.arange(14), [0, 1, 8, 9, 10, 11]))  # input kept
    # a class with fewer rows than min_class_rows (a rare class) is left alone
    np.testing.assert_array_equal(pad_regions(cells, y, margins, 2, 4, min_class_rows=9), cells)
    # so is a class with fewer rows than min_rows in all
    np.testing.assert_array_equal(pad_regions(cells, y, margins, 2, 9)[8:], cells[8:])
