"""InferredGroups checks its own fields; class_by_flag by hand."""

import numpy as np
import pytest

from gradtune import GradTuneInputError
from gradtune.groups import InferredGroups, class_by_flag


def test_class_by_flag():
    groups, n = class_by_flag(np.array([0, 1, 2, 1]), np.array([True, False, True, True]), 3)
    np.testing.assert_array_equal(groups, [1, 2, 5, 3])
    assert n == 6 and groups.dtype == np.int64


def make(**kw):
    base = {"groups": np.array([0, 3, 1], dtype=np.int64), "n_groups": 4,
            "minority": np.array([False, True, True]), "scores": np.array([0.1, 0.9, 0.5]),
            "method": "test"}
    base.update(kw)
    return InferredGroups(**base)


def test_valid_and_counts():
    r = make()
    assert len(r) == 3 and r.counts().tolist() == [1, 1, 0, 1] and r.info == {}


@pytest.mark.parametrize("kw,match", [
    ({"groups": np.array([0, 4, 1], dtype=np.int64)}, "0..3"),
    ({"groups": np.array([0, 1, 1], dtype=np.int32)}, "int64"),
    ({"n_groups": 0}, "positive"),
    ({"minority": np.array([0, 1, 1])}, "bool"),
    ({"minority": np.array([True, False])}, r"\(3,\)"),
    ({"scores": np.array([0.1, 0.9, 0.5], dtype=np.float32)}, "float64"),
])
def test_rejects_bad_fields(kw, match):
    with pytest.raises(GradTuneInputError, match=match):
        make(**kw)
