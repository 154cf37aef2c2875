"""Purity and recall of an inferred minority against hand counts."""

import math

import numpy as np
import pytest

from gradtune import GradTuneInputError
from gradtune.groups import InferredGroups, inference_quality, true_minority


def test_true_minority_two_groups_per_class():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    groups = np.array([0, 0, 0, 1, 2, 3, 3, 2, 2])
    # Class 0: cells 3 and 1 (mean 2): group 1 is minority. Class 1: cells 3 and 2 (mean 2.5): group 3.
    np.testing.assert_array_equal(true_minority(labels, groups),
                                  [False, False, False, True, False, True, True, False, False])


def test_true_minority_many_groups_and_shared_ids():
    # Class 0 has cells of size 5, 3, 1, 1 (mean 2.5): the size-1 cells are minority.
    # Class 1 has two equal cells: no minority. Group ids 0/1 are shared across classes.
    labels = np.array([0] * 10 + [1] * 4)
    groups = np.array([0] * 5 + [1] * 3 + [2] + [3] + [0, 0, 1, 1])
    expect = np.zeros(14, dtype=bool)
    expect[[8, 9]] = True
    np.testing.assert_array_equal(true_minority(labels, groups), expect)
    # A class with one group has no minority.
    assert not true_minority(np.zeros(5, dtype=np.int64), np.full(5, 3)).any()


def test_purity_recall_by_hand():
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    groups = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3])
    # True minority rows: 4, 5, 10, 11.
    inferred = np.zeros(12, dtype=bool)
    inferred[[4, 0, 10, 11, 7]] = True
    q = inference_quality(inferred, labels, groups)
    assert (q.n_inferred, q.n_true, q.n_both) == (5, 4, 3)
    assert q.purity == pytest.approx(3 / 5) and q.recall == pytest.approx(3 / 4)
    assert q.per_class[0] == {"purity": 0.5, "recall": 0.5, "n_inferred": 2, "n_true": 2, "n_both": 1}
    assert q.per_class[1]["purity"] == pytest.approx(2 / 3) and q.per_class[1]["recall"] == 1.0
    r = InferredGroups((2 * labels + inferred).astype(np.int64), 4, inferred,
                       inferred.astype(np.float64), "test")
    assert inference_quality(r, labels, groups) == q
    none = inference_quality(np.zeros(12, dtype=bool), labels, groups)
    assert math.isnan(none.purity) and none.recall == 0.0


def test_errors():
    with pytest.raises(GradTuneInputError, match="bool"):
        inference_quality(np.zeros(3), [0, 1, 0], [0, 1, 0])
    with pytest.raises(GradTuneInputError, match="entries"):
        inference_quality(np.zeros(3, dtype=bool), [0, 1], [0, 1, 0])
    with pytest.raises(GradTuneInputError, match=">= 0"):
        true_minority([0, 1], [0, -1])
