"""Label-free selection criteria on constructed cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from gradtune._validation import GradTuneInputError
from gradtune.selection.label_free import CRITERIA, LabelFreeScorer, criterion, list_criteria


def logits_for(pred: np.ndarray, c: int = 2, scale: float = 5.0) -> np.ndarray:
    """Confident logits whose argmax is ``pred``."""
    z = np.zeros((pred.size, c))
    z[np.arange(pred.size), pred] = scale
    return z


# 100 rows of class 0 and 50 of class 1
Y = np.array([0] * 100 + [1] * 50)


def pred_with(acc0: float, acc1: float) -> np.ndarray:
    p = Y.copy()
    p[: int(round((1 - acc0) * 100))] = 1
    p[100: 100 + int(round((1 - acc1) * 50))] = 0
    return p


def test_registry() -> None:
    assert list_criteria() == list(CRITERIA)
    for name in ("worst_class", "pseudo_erm_balanced", "pseudo_erm_worst", "pseudo_norm_worst",
                 "pseudo_norm_gmm_worst", "neg_worst_gradnorm", "accuracy", "balanced_class"):
        assert name in CRITERIA


def test_worst_and_balanced_class() -> None:
    z = logits_for(pred_with(0.9, 0.6))
    assert criterion("worst_class", z, Y) == pytest.approx(0.6)
    assert criterion("balanced_class", z, Y) == pytest.approx(0.75)
    assert criterion("accuracy", z, Y) == pytest.approx((90 + 30) / 150)


def test_pseudo_erm_groups() -> None:
    erm_pred = pred_with(0.8, 0.6)  # ERM errs on rows 0..19 (class 0) and 100..119 (class 1)
    erm = logits_for(erm_pred)
    # the ERM head itself: 0 on its own error pseudo-groups
    assert criterion("pseudo_erm_worst", erm, Y, erm_logits=erm) == 0.0
    assert criterion("pseudo_erm_balanced", erm, Y, erm_logits=erm) == pytest.approx(0.5)
    # a candidate that fixes half of each error group and breaks 10 right class-0 rows
    cand = Y.copy()
    cand[10:20] = 1  # still wrong: 10 of the 20 class-0 errors
    cand[110:120] = 0  # still wrong: 10 of the 20 class-1 errors
    cand[50:60] = 1  # newly wrong: 10 of the 80 right class-0 rows
    z = logits_for(cand)
    # groups: (0, wrong) 10/20, (0, right) 70/80, (1, wrong) 10/20, (1, right) 30/30
    assert criterion("pseudo_erm_worst", z, Y, erm_logits=erm) == pytest.approx(0.5)
    assert criterion("pseudo_erm_balanced", z, Y, erm_logits=erm) == pytest.approx((0.5 + 70 / 80 + 0.5 + 1) / 4)


def test_pseudo_norm_groups_median_and_threshold() -> None:
    norms = np.where(np.arange(150) % 2 == 0, 1.0, 0.01)  # even rows high: exactly half
    pred = Y.copy()
    pred[0:40:2] = 1  # 20 of the 50 high-norm class-0 rows wrong -> 0.6
    z = logits_for(pred)
    assert criterion("pseudo_norm_worst", z, Y, erm_norms=norms) == pytest.approx(0.6)
    assert criterion("pseudo_norm_gmm_worst", z, Y, erm_norms=norms, norm_threshold=0.5) == pytest.approx(0.6)
    # a threshold above every norm puts all rows in the low groups: worst class only
    assert criterion("pseudo_norm_gmm_worst", z, Y, erm_norms=norms, norm_threshold=2.0) == pytest.approx(0.8)


def test_small_pseudo_groups_are_ignored() -> None:
    erm_pred = Y.copy()
    erm_pred[:3] = 1  # an error group of 3 rows (< min_group_size=10)
    erm = logits_for(erm_pred)
    z = logits_for(Y)
    z[:3] = logits_for(np.ones(3, dtype=int))  # candidate keeps those 3 wrong
    assert criterion("pseudo_erm_worst", z, Y, erm_logits=erm) == 1.0
    assert criterion("pseudo_erm_worst", z, Y, erm_logits=erm, min_group_size=1) == 0.0


def test_neg_worst_gradnorm() -> None:
    norms = np.where(np.arange(150) % 2 == 0, 1.0, 0.01)
    z = np.zeros((150, 2))  # p = (0.5, 0.5): ||p - e_y|| = sqrt(0.5) everywhere
    assert criterion("neg_worst_gradnorm", z, Y, erm_norms=norms) == pytest.approx(-np.sqrt(0.5))
    perfect = logits_for(Y, scale=50.0)
    assert criterion("neg_worst_gradnorm", perfect, Y, erm_norms=norms) == pytest.approx(0.0, abs=1e-12)
    # a wrong, confident prediction in a group of ten costs sqrt(2)/|group| of its mean
    wrong = perfect.copy()
    wrong[0] = logits_for(np.array([1]), scale=50.0)[0]
    assert criterion("neg_worst_gradnorm", wrong, Y, erm_norms=norms) == pytest.approx(-np.sqrt(2) / 50)


def test_scorer_reuses_groups_and_lists_available() -> None:
    sc = LabelFreeScorer(Y, 2)
    assert sc.available() == ["accuracy", "worst_class", "balanced_class"]
    z = logits_for(pred_with(0.9, 0.6))
    assert sc.score_all(z)["worst_class"] == pytest.approx(0.6)
    sc2 = LabelFreeScorer(Y, 2, erm_logits=z, erm_norms=np.linspace(0.01, 1, 150))
    assert set(sc2.available()) == set(CRITERIA)


def test_three_classes() -> None:
    y = np.repeat([0, 1, 2], 20)
    pred = y.copy()
    pred[40:50] = 0  # class 2 at 0.5
    z = logits_for(pred, c=3)
    assert criterion("worst_class", z, y) == pytest.approx(0.5)
    assert criterion("pseudo_erm_worst", z, y, erm_logits=logits_for(y, c=3)) == pytest.approx(0.5)


def test_errors_and_nonfinite() -> None:
    z = logits_for(Y)
    with pytest.raises(GradTuneInputError, match="unknown criterion"):
        criterion("wga", z, Y)
    with pytest.raises(GradTuneInputError, match="erm_logits"):
        criterion("pseudo_erm_worst", z, Y)
    with pytest.raises(GradTuneInputError, match="erm_norms"):
        criterion("pseudo_norm_worst", z, Y)
    with pytest.raises(GradTuneInputError, match="shape"):
        criterion("worst_class", z[:10], Y)
    with pytest.raises(GradTuneInputError):
        criterion("worst_class", z, Y + 5)
    bad = z.copy()
    bad[0, 0] = np.nan
    assert criterion("worst_class", bad, Y) == float("-inf")
