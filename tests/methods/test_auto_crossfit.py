"""Cross-fitting of gradtune-auto: folds by class, region cells and candidates that never
see the rows they judge."""

from __future__ import annotations

import numpy as np
import pytest

from gradtune.methods import get_method
from gradtune.methods.auto_candidates import AutoCandidate
from gradtune.methods.auto_crossfit import class_folds, fold_cells, fold_correct
from gradtune.methods.base import LinearHead
from gradtune.selection.audit import region_cells
from tests.methods._synthetic import make_spurious_bundle


def _rows(seed: int, n: int, d: int = 5, n_classes: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    x = rng.normal(size=(n, d)) + y[:, None]
    flag = rng.random(n) < 0.2 + 0.1 * (x[:, 1] > 1)
    return x, y, flag


def test_class_folds_deal_every_class_evenly() -> None:
    y = np.repeat([0, 1, 2], [10, 7, 3])
    folds = class_folds(y, 3, np.random.default_rng(0))
    for k in range(3):
        counts = np.bincount(folds[y == k], minlength=3)
        assert counts.max() - counts.min() <= 1 and counts.sum() == (y == k).sum()
    rng = np.random.default_rng(5)
    state = rng.bit_generator.state
    np.testing.assert_array_equal(class_folds(y, 1, rng), np.zeros(len(y), dtype=np.int64))
    assert rng.bit_generator.state == state       # one fold draws nothing


def test_one_fold_is_the_other_half_alone() -> None:
    xs, ys, fs = _rows(0, 120)
    xo, yo, fo = _rows(1, 150)
    got = fold_cells(xs, ys, fs, xo, yo, fo, np.zeros(len(ys), dtype=np.int64), 3)
    np.testing.assert_array_equal(got, region_cells(xo, yo, fo, xs, ys, 3))


def test_each_fold_is_placed_by_a_model_that_never_saw_it() -> None:
    xs, ys, fs = _rows(2, 200)
    xo, yo, fo = _rows(3, 180)
    folds = class_folds(ys, 2, np.random.default_rng(1))
    got = fold_cells(xs, ys, fs, xo, yo, fo, folds, 3)
    for j in (0, 1):     # by hand: the other half, then this half's other fold
        out = folds != j
        want = region_cells(np.concatenate([xo, xs[out]]), np.concatenate([yo, ys[out]]),
                            np.concatenate([fo, fs[out]]), xs[folds == j], ys[folds == j], 3)
        np.testing.assert_array_equal(got[folds == j], want)
    flipped = fs.copy()
    flipped[folds == 0] = ~flipped[folds == 0]       # fold 0's own flags do not move fold 0's cells
    np.testing.assert_array_equal(fold_cells(xs, ys, flipped, xo, yo, fo, folds, 3)[folds == 0], got[folds == 0])


def test_candidates_are_judged_only_on_rows_they_were_not_fitted_on() -> None:
    xs, ys, _ = _rows(4, 90, d=3, n_classes=2)
    xo, yo, _ = _rows(5, 60, d=3, n_classes=2)
    xs[:, 2], xo[:, 2] = np.arange(90), 1000 + np.arange(60)    # a row id in the last column
    gs, go = {"xrm": 2 * ys}, {"xrm": 2 * yo}
    folds = class_folds(ys, 3, np.random.default_rng(2))
    seen: list[set[int]] = []

    def fit(x: np.ndarray, y: np.ndarray, groups: dict[str, np.ndarray]) -> list[tuple[str, AutoCandidate]]:
        assert len(groups["xrm"]) == len(y) == len(x)
        seen.append({int(v) for v in x[:, 2]})
        w = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]) * len(seen)   # a different head per fold
        bad = LinearHead(np.full((2, 3), np.nan), np.zeros(2)) if len(seen) == 2 else LinearHead(w, np.zeros(2))
        return [("erm", AutoCandidate("erm", 0.0, LinearHead(w, np.zeros(2)))), ("xrm", AutoCandidate("retrain", 1.0,
                                                                                                     bad))]

    pairs, correct, valid = fold_correct(fit, xs, ys, gs, xo, yo, go, folds)
    assert len(seen) == 3
    for j, rows in enumerate(seen):
        judged = set(np.flatnonzero(folds == j).tolist())
        assert not rows & judged                                  # never fitted on the rows it judges
        assert rows == set(range(1000, 1060)) | (set(range(90)) - judged)
    np.testing.assert_array_equal(correct[0], (xs[:, 0] > 0).astype(int) == ys)
    assert valid.tolist() == [True, False]                        # fold 1's second head was not finite
    np.testing.assert_array_equal(pairs[0][1].head.weight, np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))


@pytest.mark.parametrize("half_folds", [2, 3])
def test_gradtune_auto_with_folds_runs_and_is_reproducible(half_folds: int) -> None:
    b = make_spurious_bundle(n_train=400, n_heldout=600, n_selection=600, n_test=400, d=16, seed=3, align_eval=0.9,
                             encoder_dim=6)
    params = {"xrm_steps": 300, "c_grid": (1.0, 0.1), "num_retrains": 2, "half_folds": half_folds}
    a = get_method("gradtune-auto", **params).fit(b, seed=2)
    again = get_method("gradtune-auto", **params).fit(b, seed=2)
    np.testing.assert_array_equal(a.model.weight, again.model.weight)
    assert a.diagnostics == again.diagnostics
    one = get_method("gradtune-auto", **{**params, "half_folds": 1}).fit(b, seed=2)
    assert [c["value"] for c in one.diagnostics["candidates"]] != [c["value"] for c in a.diagnostics["candidates"]]


def test_vetoed_by_hand() -> None:
    from gradtune.methods.auto_crossfit import vetoed

    # half a: rows 0-3, veto rows 1 and 2; half b: rows 0-2, veto row 0
    ok_a = np.array([[1, 0, 1, 1],     # ERM head: 1 of 2 veto rows right
                     [1, 1, 1, 0],     # 2 of 2: kept
                     [0, 1, 1, 1]], dtype=bool)
    ok_b = np.array([[1, 0, 0],        # ERM head: 1 of 1
                     [0, 1, 1],        # 0 of 1: vetoed on half b
                     [1, 0, 1]], dtype=bool)
    rows_a = np.array([False, True, True, False])
    rows_b = np.array([True, False, False])
    np.testing.assert_array_equal(vetoed([ok_a, ok_b], [rows_a, rows_b]), [False, True, False])
    np.testing.assert_array_equal(vetoed([ok_a], [rows_a]), [False, False, False])
    # no veto row on a half: nothing refused there
    np.testing.assert_array_equal(vetoed([ok_b], [np.zeros(3, dtype=bool)]), [False, False, False])



def test_veto_reason_says_what_the_veto_did() -> None:
    from gradtune.methods.auto_crossfit import veto_reason

    guard = "no candidate beat the ERM head on the audit cells by more than the noise (best 0.0% ...)"
    assert veto_reason(None, np.array([False, True])) is None                 # a repair: no reason
    assert veto_reason(guard, np.zeros(3, dtype=bool)) == guard               # nothing vetoed
    every = veto_reason(guard, np.array([False, True, True]))
    assert every is not None and every.startswith("every candidate (2) was vetoed") and "0.0%" not in every
    some = veto_reason(guard, np.array([False, True, False, False]))
    assert some is not None and some.startswith(guard) and "1 of 3 candidates vetoed" in some


def test_minority_loss_and_refused_by_hand() -> None:
    from gradtune.methods.auto_crossfit import minority_loss, refused

    # half a: 5 rows; inferred-minority region = odd cells: rows 0, 1, 2, 4; ERM right on 0, 1, 3, 4
    cells_a = np.array([1, 3, 1, 0, 3])
    ok_a = np.array([[1, 1, 0, 1, 1],      # ERM head: kept rows are 0, 1, 4 (in the region, right)
                     [1, 1, 1, 0, 1],      # 0 of 3 kept rows lost
                     [1, 0, 1, 1, 1],      # 1 of 3 lost
                     [0, 0, 1, 1, 1]], dtype=bool)   # 2 of 3 lost
    cells_b = np.array([0, 1, 1])
    ok_b = np.array([[1, 1, 1],            # kept rows 1, 2
                     [1, 0, 1],            # 1 of 2 lost on half b
                     [1, 1, 1],
                     [1, 1, 1]], dtype=bool)
    np.testing.assert_allclose(minority_loss([ok_a], [cells_a]), [0, 0, 1 / 3, 2 / 3])
    np.testing.assert_allclose(minority_loss([ok_a, ok_b], [cells_a, cells_b]), [0, 1 / 2, 1 / 3, 2 / 3])
    # no kept row on a half: nothing lost there
    np.testing.assert_allclose(minority_loss([ok_b], [np.zeros(3, dtype=int)]), [0] * 4)
    # refused: the padded cells' veto or'ed with a loss above max_loss; each off when not given
    bad, loss = refused([ok_a, ok_b], None, [cells_a, cells_b], None)
    np.testing.assert_array_equal(bad, [False] * 4)
    np.testing.assert_allclose(loss, [0, 1 / 2, 1 / 3, 2 / 3])
    np.testing.assert_array_equal(refused([ok_a, ok_b], None, [cells_a, cells_b], 0.4)[0], [False, True, False, True])
    veto = [np.array([False, False, True, False, False])]   # ERM wrong on row 2, every candidate right
    np.testing.assert_array_equal(refused([ok_a], veto, [cells_a], None)[0], [False] * 4)
    veto_row0 = [np.array([True, False, False, False, False])]   # candidate 3 loses row 0
    np.testing.assert_array_equal(refused([ok_a], veto_row0, [cells_a], None)[0], [False, False, False, True])
    np.testing.assert_array_equal(refused([ok_a], veto_row0, [cells_a], 0.0)[0], [False, False, True, True])

def test_pad_cells_by_mode() -> None:
    from gradtune.methods.auto_crossfit import pad_cells, pad_half, veto_rows

    rng = np.random.default_rng(0)
    y_a, y_b = np.repeat([0, 1], 30), np.repeat([0, 1], 25)
    cells_a, cells_b = 2 * y_a, 2 * y_b
    cells_a[[0, 1, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39]] += 1   # class 0: 2 region rows, class 1: 10
    cells_b[[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 25]] += 1                # class 0: 10, class 1: 1
    logits_a, logits_b = rng.normal(size=(60, 2)), rng.normal(size=(50, 2))
    cells = (cells_a, cells_a.copy(), cells_b, cells_b.copy())
    args = ((y_a, y_b), lambda: (logits_a, logits_b), 2, 10, 0.5)
    off, cover, veto = pad_cells("off", cells, *args)
    assert off is cells and veto is None and all(c is d for c, d in zip(cover, cells, strict=True))
    padded = (*pad_half(cells[:2], y_a, logits_a, 2, 10, 0.5), *pad_half(cells[2:], y_b, logits_b, 2, 10, 0.5))
    got, cover, veto = pad_cells("margin", cells, *args)
    assert veto is None
    for g, c, p in zip(got, cover, padded, strict=True):
        np.testing.assert_array_equal(g, p)
        np.testing.assert_array_equal(c, p)
    got, cover, veto = pad_cells("veto", cells, *args)
    assert got is cells and veto is not None
    np.testing.assert_array_equal(veto[0], veto_rows(cells_a, padded[0], y_a, 2, 10))
    # the veto rows are the 10 padded region rows of the small class only
    assert veto[0].sum() == 10 and set(y_a[veto[0]]) == {0}
    assert veto[1].sum() == 10 and set(y_b[veto[1]]) == {1}
