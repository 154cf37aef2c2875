"""The guard of label-free repair, on hand-made audit values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradtune.selection.guard import GuardRule, class_balanced_accuracy, guard_choice


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
    assert d.best == 0 and "mean accuracy over the inferred groups" in d.reason
