"""gradtune.methods.auto_judge: the guard's record of one cell set, against hand counts."""

from __future__ import annotations

import numpy as np
import pytest

from gradtune.methods.auto_judge import CELL_ORDER, VALUE_CELLS, cell_values, judged_record
from gradtune.selection.guard import GuardRule, replay_guard


def test_cell_values_by_hand() -> None:
    # 6 rows, two classes: cells 0 / 1 (class 0 outside / inside its region), 2 / 3 (class 1)
    cells = np.array([0, 0, 1, 1, 2, 3])
    correct = np.array([[1, 1, 0, 1, 1, 0],      # cell accuracies 1, 0.5, 1, 0 -> worst 0 (cell 3, 1 row)
                        [1, 0, 1, 1, 1, 1],      # 0.5, 1, 1, 1 -> worst 0.5 (cell 0, 2 rows)
                        [0, 0, 0, 0, 0, 0]], dtype=bool)
    values, sizes = cell_values(correct, np.array([True, True, False]), cells, 2, 1)
    assert values[:2].tolist() == [0.0, 0.5] and sizes[:2].tolist() == [1, 2]
    assert values[2] == -np.inf and sizes[2] == 1                       # invalid head
    values, sizes = cell_values(correct, np.ones(3, dtype=bool), cells, 2, 2)   # cells of 2+ rows only
    assert values.tolist() == [0.5, 0.5, 0.0] and sizes.tolist() == [2, 2, 2]


def test_judged_record_values_floor_and_refusals() -> None:
    rng = np.random.default_rng(0)
    cells = [np.repeat([0, 1, 2, 3], 15), np.repeat([0, 1, 2, 3], 10)]
    other = [np.repeat([0, 0, 2, 3], 15), np.repeat([0, 1, 2, 2], 10)]   # a second region model
    correct = [rng.random((3, 60)) < [[0.9], [0.7], [0.5]], rng.random((3, 40)) < [[0.9], [0.6], [0.5]]]
    refused = np.array([False, False, True])
    rule = GuardRule(margin=0.05)
    rec = judged_record(correct, np.ones(3, dtype=bool), cells, [(c, o) for c, o in zip(cells, other, strict=True)],
                        refused, np.array([0.9, 0.8, 0.7]), np.array([0.7, 0.7, 0.6]), rule, 2, 5,
                        gain_quantile=None, rng=rng, n_boot=10)
    for half, key in ((0, "values_a"), (1, "values_b")):
        ok, c = correct[half], cells[half]
        by_hand = [min(ok[k][c == j].mean() for j in range(4)) for k in range(3)]
        assert rec[key][:2] == pytest.approx(by_hand[:2]) and rec[key][2] == 0.0   # refused: no value
    floors = [[min(min(ok[k][c == j].mean() for j in np.unique(c)) for c in cs) for k in range(3)]
              for ok, cs in zip(correct, zip(cells, other, strict=True), strict=True)]
    assert rec["floor_values"][:2] == pytest.approx(np.mean(floors, axis=0)[:2]) and rec["floor_values"][2] == 0.0
    assert rec["lower"] is None
    assert replay_guard(rec).best in (0, 1)


def test_cell_orders() -> None:
    assert VALUE_CELLS == ("inferred", "mistakes", "mistakes_then_inferred")
    assert CELL_ORDER["mistakes_then_inferred"] == ("mistakes", "inferred")


def test_judged_record_of_one_half() -> None:
    # without cross-fitting only the selection half is judged: no second half in the record
    cells = np.repeat([0, 1, 2, 3], 10)
    correct = np.array([[True] * 35 + [False] * 5, [True] * 40])
    rec = judged_record([correct], np.ones(2, dtype=bool), [cells], [(cells,)], np.zeros(2, dtype=bool),
                        np.array([0.9, 0.95]), np.array([0.8, 0.9]), GuardRule(), 2, 5,
                        gain_quantile=0.1, rng=np.random.default_rng(0), n_boot=20)
    assert rec["values_b"] is None and rec["sizes_b"] is None
    assert rec["values_a"] == [0.5, 1.0] and rec["lower"][0] == 0.0 and rec["lower"][1] > 0
