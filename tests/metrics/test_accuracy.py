"""Metrics against hand-counted examples."""

import numpy as np
import pytest

from gradtune import GradTuneInputError, evaluate, group_accuracies, groups_from_attributes
from gradtune.metrics import weighted_accuracy, worst_class_accuracy, worst_group_accuracy

# 10 samples, 2 classes, 2 attributes -> 4 groups (label * 2 + attribute)
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 0, 1, 1])
ATTRS = np.array([0, 0, 0, 1, 1, 1, 0, 1, 1, 0])
PREDS = np.array([0, 0, 1, 1, 1, 1, 0, 0, 1, 1])
# group 0 (y0,a0): idx 0,1,2 -> correct 0,1 -> 2/3
# group 1 (y0,a1): idx 3,7 -> preds 1,0 -> 1/2
# group 2 (y1,a0): idx 6,9 -> preds 0,1 -> 1/2
# group 3 (y1,a1): idx 4,5,8 -> all correct -> 3/3


def test_groups_from_attributes():
    g = groups_from_attributes(LABELS, ATTRS)
    assert g.tolist() == [0, 0, 0, 1, 3, 3, 2, 1, 3, 2]


def test_group_accuracies_hand_counted():
    acc, counts = group_accuracies(PREDS, LABELS, groups_from_attributes(LABELS, ATTRS))
    np.testing.assert_allclose(acc, [2 / 3, 1 / 2, 1 / 2, 1.0])
    assert counts.tolist() == [3, 2, 2, 3]


def test_evaluate_all_metrics():
    groups = groups_from_attributes(LABELS, ATTRS)
    train_counts = np.array([3498, 184, 56, 1057])
    rep = evaluate(PREDS, LABELS, groups, train_group_counts=train_counts)
    assert rep.accuracy == pytest.approx(7 / 10)
    assert rep.worst_group_accuracy == pytest.approx(0.5)
    assert rep.mean_group_accuracy == pytest.approx((2 / 3 + 0.5 + 0.5 + 1) / 4)
    expected_w = (3498 * 2 / 3 + 184 * 0.5 + 56 * 0.5 + 1057 * 1.0) / (3498 + 184 + 56 + 1057)
    assert rep.weighted_accuracy == pytest.approx(expected_w)
    # class 0: idx 0,1,2,3,7 -> correct 0,1,7? preds 0,0,1,1,0 -> 3/5 ; class 1: idx 4,5,6,8,9 -> 4/5
    assert rep.class_accuracy == pytest.approx([3 / 5, 4 / 5])
    assert rep.worst_class_accuracy == pytest.approx(3 / 5)
    assert rep.worst_group in (1, 2)
    assert rep.group_count == [3, 2, 2, 3]


def test_logits_accepted_and_empty_group_is_none():
    logits = np.eye(2)[PREDS] * 3.0
    groups = groups_from_attributes(LABELS, ATTRS)
    rep = evaluate(logits, LABELS, groups, n_groups=5)
    assert rep.group_accuracy[4] is None
    assert rep.worst_group_accuracy == pytest.approx(0.5)
    assert worst_group_accuracy(logits, LABELS, groups) == pytest.approx(0.5)
    assert worst_class_accuracy(PREDS, LABELS) == pytest.approx(0.6)


def test_weighted_accuracy_ignores_empty():
    assert weighted_accuracy(np.array([1.0, np.nan, 0.5]), [1, 5, 1]) == pytest.approx(0.75)


def test_without_groups_only_label_free():
    rep = evaluate(PREDS, LABELS)
    assert rep.worst_group_accuracy is None and rep.group_accuracy == []
    assert rep.worst_class_accuracy == pytest.approx(0.6)


@pytest.mark.parametrize(
    "args, match",
    [
        ((PREDS[:5], LABELS, None), "same length"),
        ((PREDS, LABELS, np.arange(9)), "same length"),
        ((PREDS, LABELS - 1, None), ">= 0"),
        ((PREDS, LABELS.astype(float) + 0.5, None), "integer"),
    ],
)
def test_errors(args, match):
    with pytest.raises(GradTuneInputError, match=match):
        evaluate(*args)
