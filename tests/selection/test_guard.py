"""The guard of label-free repair, on hand-made audit values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradtune._validation import GradTuneInputError
from gradtune.selection.audit import worst_cell_accuracy
from gradtune.selection.guard import (
    GuardRule,
    bootstrap_worst_cells,
    class_balanced_accuracy,
    guard_choice,
    guard_record,
    paired_gain_bound,
    replay_guard,
)


def _se(v: float, v0: float, n: int) -> float:
    return math.sqrt(v * (1 - v) + v0 * (1 - v0)) / math.sqrt(n)


def test_pooled_margin_by_hand() -> None:
    # ERM 0.2 on both halves (cells of 50 rows each); candidate 1 at 0.5, candidate 2 at 0.3
    va, vb = np.array([0.2, 0.5, 0.3]), np.array([0.2, 0.5, 0.3])
    n = np.array([50, 50, 50])
    bal = np.array([0.9, 0.85, 0.88])
    d = guard_choice(va, n, bal, GuardRule(margin_z=1.0), vb, n)
    # pooled over both halves: min(100, 100) rows
    assert d.needed[1] == pytest.approx(0.2 + _se(0.5, 0.2, 100))
    assert d.needed[2] == pytest.approx(0.2 + _se(0.3, 0.2, 100))
    assert d.allowed.tolist() == [True, True, 0.3 > 0.2 + _se(0.3, 0.2, 100)]
    assert d.best == 1 and d.reason is None


def test_each_half_must_confirm_the_gain() -> None:
    # mean gain is large, but it all comes from one half: half b shows nothing
    va, vb = np.array([0.2, 0.8]), np.array([0.2, 0.21])
    n = np.array([40, 40])
    bal = np.array([0.9, 0.9])
    assert guard_choice(va, n, bal, GuardRule(margin_z=1.0), vb, n).best == 1
    d = guard_choice(va, n, bal, GuardRule(margin_z=1.0, confirm_z=0.0), vb, n)
    assert d.best == 1                                    # 0.21 > 0.2: a positive gain on each half
    d = guard_choice(va, n, bal, GuardRule(margin_z=1.0, confirm_z=1.0), vb, n)
    assert d.best == 0 and "each validation half" in d.reason
    # the per-half threshold by hand: 0.2 + 1.0 * se on that half's 40 rows
    ok_b = 0.2 + _se(0.5, 0.2, 40)
    d = guard_choice(va, n, bal, GuardRule(margin_z=1.0, confirm_z=1.0), np.array([0.2, ok_b + 1e-6]), n)
    assert d.best == 1


def test_floor_balanced_drop_and_non_finite_candidates() -> None:
    va = np.array([0.1, 0.35, -np.inf, 0.9])
    n = np.array([100, 100, 1, 100])
    bal = np.array([0.9, 0.9, -np.inf, 0.5])
    d = guard_choice(va, n, bal, GuardRule(min_repaired_accuracy=0.4, max_balanced_drop=0.3))
    assert d.allowed.tolist() == [True, False, False, False]   # floor; non-finite; balanced drop 0.4
    assert d.best == 0 and "max_balanced_drop" in d.reason
    d = guard_choice(va[:3], n[:3], bal[:3], GuardRule(min_repaired_accuracy=0.4, max_balanced_drop=0.3))
    assert "min_repaired_accuracy" in d.reason


def test_class_balanced_accuracy_by_hand() -> None:
    correct = np.array([1, 1, 0, 1, 0, 0], dtype=bool)
    labels = np.array([0, 0, 0, 1, 1, 2])
    # class 0: 2/3, class 1: 1/2, class 2: 0/1, class 3 absent
    assert class_balanced_accuracy(correct, labels, 4) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


def test_a_repair_may_not_lower_the_mean_accuracy_over_the_inferred_groups() -> None:
    # candidate 1 lifts the worst audit cell a lot but lowers the pseudo-group mean by 0.03;
    # candidate 2 lifts it less and keeps the mean
    va = np.array([0.2, 0.6, 0.45])
    n = np.array([200, 200, 200])
    bal = np.array([0.8, 0.75, 0.79])
    pseudo = np.array([0.70, 0.67, 0.71])
    assert guard_choice(va, n, bal, GuardRule(), pseudo=pseudo).best == 1          # no pseudo rule
    d = guard_choice(va, n, bal, GuardRule(max_pseudo_drop=0.0), pseudo=pseudo)
    assert d.allowed.tolist() == [True, False, True] and d.best == 2
    assert guard_choice(va, n, bal, GuardRule(max_pseudo_drop=0.05), pseudo=pseudo).best == 1
    d = guard_choice(va[:2], n[:2], bal[:2], GuardRule(max_pseudo_drop=0.0), pseudo=pseudo[:2])
    assert d.best == 0 and "mean accuracy over the inferred groups (weighted equally)" in d.reason
    rule = GuardRule(max_pseudo_drop=0.0, pseudo_weighting="as the deployment rows hold them")
    d = guard_choice(va[:2], n[:2], bal[:2], rule, pseudo=pseudo[:2])
    assert "(weighted as the deployment rows hold them)" in d.reason


def test_negative_pseudo_drop_asks_for_a_gain():
    # candidate 1 has the best worst cell but raises the pseudo-group mean by 0.01 only;
    # candidate 2 raises it by 0.03
    va = np.array([0.2, 0.6, 0.45])
    n = np.array([200, 200, 200])
    bal = np.array([0.8, 0.75, 0.79])
    pseudo = np.array([0.70, 0.71, 0.73])
    assert guard_choice(va, n, bal, GuardRule(max_pseudo_drop=0.0), pseudo=pseudo).best == 1
    d = guard_choice(va, n, bal, GuardRule(max_pseudo_drop=-0.02), pseudo=pseudo)
    assert d.allowed.tolist() == [True, False, True] and d.best == 2
    d = guard_choice(va, n, bal, GuardRule(max_pseudo_drop=-0.05), pseudo=pseudo)
    assert d.best == 0
    assert "raises the mean accuracy over the inferred groups (weighted equally) by less than 0.05" in d.reason


def _slow_worst(correct: np.ndarray, cells: np.ndarray, n_cells: int, min_rows: int, w: np.ndarray) -> float:
    """Weighted worst-cell accuracy of one head under one weighting, cell by cell."""
    counts = np.bincount(cells, minlength=n_cells)
    kept = [c for c in range(n_cells) if counts[c] >= min_rows] or None
    if kept is None:
        return float((w * correct).sum() / w.sum())
    accs = []
    for c in kept:
        rows = cells == c
        if w[rows].sum() > 0:
            accs.append(float((w[rows] * correct[rows]).sum() / w[rows].sum()))
    return min(accs)


def test_bootstrap_worst_cells_match_a_cell_by_cell_loop() -> None:
    rng = np.random.default_rng(0)
    n, k = 120, 4
    cells = rng.integers(0, 5, size=n)
    cells[cells == 4] = 3                       # cell 4 empty
    cells[:3] = 4                               # ... now 3 rows: below min_rows, left out
    correct = rng.random((k, n)) < 0.7
    w = rng.poisson(1.0, size=(6, n))
    w[0] = 1                                    # the plain sample
    got = bootstrap_worst_cells(correct, cells, 6, 10, w)
    assert got.shape == (k, 6)
    for i in range(k):
        for b in range(6):
            assert got[i, b] == pytest.approx(_slow_worst(correct[i], cells, 6, 10, w[b].astype(float)), abs=1e-6)
        # unit weights give the unweighted worst cell
        assert got[i, 0] == pytest.approx(worst_cell_accuracy(correct[i], cells, 6, 10)[0], abs=1e-6)
    # no cell large enough: all rows form one cell
    few = bootstrap_worst_cells(correct[:, :8], np.arange(8), 8, 10, np.ones((1, 8)))
    np.testing.assert_allclose(few[:, 0], correct[:, :8].mean(axis=1), atol=1e-6)


def test_paired_gain_bound_is_the_quantile_of_the_mean_gain_over_halves() -> None:
    rng = np.random.default_rng(1)
    halves = []
    for n in (80, 100):
        cells = rng.integers(0, 4, size=n)
        erm = rng.random(n) < 0.6
        fixed = erm | (rng.random(n) < 0.5)      # head 1: ERM's right rows and half the others
        broken = erm & (rng.random(n) < 0.7)     # head 2: loses some of ERM's right rows
        halves.append((np.stack([erm, fixed, broken]), cells))
    got = paired_gain_bound(halves, 4, 5, 0.1, np.random.default_rng(7), n_boot=50)
    # the same draws by hand
    draw = np.random.default_rng(7)
    total = np.zeros((3, 50))
    for correct, cells in halves:
        w = draw.poisson(1.0, size=(50, len(cells)))
        total += np.array([[_slow_worst(correct[i], cells, 4, 5, w[b].astype(float)) for b in range(50)]
                           for i in range(3)])
    expect = np.quantile((total - total[0]) / 2, 0.1, axis=1)
    np.testing.assert_allclose(got, expect, atol=1e-6)
    assert got[0] == 0.0 and got[1] > 0 > got[2]   # a head that only fixes rows gains; one that only breaks loses


def test_the_paired_bound_gates_the_choice() -> None:
    va = np.array([0.2, 0.5, 0.45])
    n = np.array([50, 50, 50])
    bal = np.array([0.9, 0.88, 0.89])
    d = guard_choice(va, n, bal, GuardRule(), lower=np.array([0.0, -0.01, 0.05]))
    assert d.allowed.tolist() == [True, False, True] and d.best == 2
    d = guard_choice(va[:2], n[:2], bal[:2], GuardRule(), lower=np.array([0.0, -0.01]))
    assert d.best == 0 and "paired bootstrap" in d.reason


def test_the_bound_does_not_depend_on_the_draws_being_made_in_blocks() -> None:
    rng = np.random.default_rng(3)
    cells = rng.integers(0, 4, size=90)
    correct = rng.random((3, 90)) < 0.6
    blocked = paired_gain_bound([(correct, cells)], 4, 5, 0.2, np.random.default_rng(5), n_boot=150)
    w = np.random.default_rng(5).poisson(1.0, size=(150, 90))
    worst = bootstrap_worst_cells(correct, cells, 4, 5, w)
    np.testing.assert_allclose(blocked, np.quantile(worst - worst[0], 0.2, axis=1), atol=1e-9)


def test_a_recorded_guard_call_replays_exactly_and_under_other_thresholds() -> None:
    import json

    va, vb = np.array([0.2, 0.5, 0.45, -np.inf]), np.array([0.25, 0.4, 0.5, -np.inf])
    n = np.array([40, 40, 40, 40])
    bal = np.array([0.9, 0.8, 0.86, 0.5])
    pseudo = np.array([0.7, 0.72, 0.71, 0.5])
    lower = np.array([0.0, 0.2, 0.04, -1.0])
    floor = np.array([0.2, 0.35, 0.3, 0.0])
    rule = GuardRule(margin=0.05, confirm_z=0.0, max_balanced_drop=0.3, min_repaired_accuracy=0.3,
                     max_pseudo_drop=0.0)
    args = (va, n, bal, rule, vb, n)
    kw = {"pseudo": pseudo, "lower": lower, "floor_values": floor}
    rec = json.loads(json.dumps(guard_record(*args, **kw)))          # survives JSON, -inf included
    want, got = guard_choice(*args, **kw), replay_guard(rec)
    assert got.best == want.best == 1
    np.testing.assert_array_equal(got.allowed, want.allowed)
    np.testing.assert_array_equal(got.values, want.values)
    assert got.reason == want.reason
    # overrides: a thresholds' change is guard_choice with the changed rule ...
    from dataclasses import replace as dc_replace
    for change in ({"margin": 0.3}, {"max_balanced_drop": 0.05}, {"min_repaired_accuracy": 0.5}):
        expect = guard_choice(va, n, bal, dc_replace(rule, **change), vb, n, **kw)
        again = replay_guard(rec, **change)
        assert again.best == expect.best and again.reason == expect.reason, change
    assert replay_guard(rec, margin=0.3).best == 0                    # no candidate beats ERM by 0.3
    # ... and lower=None / floor_values=None drop the bound and the separate floor cells
    no_bound = replay_guard(rec, lower=None)
    assert no_bound.best == guard_choice(*args, pseudo=pseudo, floor_values=floor).best
    no_floor = replay_guard(rec, floor_values=None, min_repaired_accuracy=0.4)
    assert no_floor.best == 1                                         # its value 0.45 is read, not its floor
    assert replay_guard(rec, min_repaired_accuracy=0.4).best == 0     # its floor 0.35 is under 0.4
    with pytest.raises(GradTuneInputError, match="not a guard_record"):
        replay_guard({"values_a": [0.1, 0.2]})


def test_replay_guards_judges_the_next_cell_set_only_when_the_previous_keeps_the_head() -> None:
    from gradtune.selection.guard import replay_guards

    rule = GuardRule(margin=0.05)
    keeps = guard_record(np.array([0.4, 0.42]), np.array([30, 30]), np.array([0.9, 0.9]), rule)
    repairs = guard_record(np.array([0.4, 0.6]), np.array([30, 30]), np.array([0.9, 0.9]), rule)
    used, d = replay_guards([keeps, repairs])
    assert used == 1 and d.best == 1
    used, d = replay_guards([repairs, keeps])
    assert used == 0 and d.best == 1
    used, d = replay_guards([keeps, keeps])
    assert used == 1 and d.best == 0 and d.reason
    used, d = replay_guards([repairs, repairs], margin=0.5)   # overrides reach every record
    assert used == 1 and d.best == 0
    with pytest.raises(GradTuneInputError):
        replay_guards([])
