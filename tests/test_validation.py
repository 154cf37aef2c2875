"""Shared input checks: the fast finiteness test and the label range switch."""

import numpy as np
import pytest
import torch

from gradtune._validation import GradTuneInputError, all_finite, check_features, check_labels


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_all_finite_agrees_with_isfinite(dtype):
    rng = np.random.default_rng(0)
    big = float(torch.finfo(dtype).max)
    cases = [torch.zeros(0, 3), torch.randn(50, 7), torch.full((4, 4), big, dtype=dtype),  # the sum overflows
             torch.tensor([big, big, -big, 1.0], dtype=dtype)]
    for bad in (float("nan"), float("inf"), float("-inf")):
        t = torch.randn(30, 5)
        t[int(rng.integers(30)), int(rng.integers(5))] = bad
        cases.append(t)
    both_inf = torch.ones(8)
    both_inf[2], both_inf[5] = float("inf"), float("-inf")  # sum is NaN
    cases.append(both_inf)
    for t in cases:
        t = t.to(dtype)
        assert all_finite(t) == bool(torch.isfinite(t).all()), t


def test_check_features_reports_rows_with_nan():
    x = torch.ones(5, 3)
    x[1, 2] = float("nan")
    x[3, 0] = float("inf")
    with pytest.raises(GradTuneInputError, match=r"features contains NaN or infinite values in 2 row\(s\)"):
        check_features(x)
    assert check_features(torch.full((2, 2), 3e38)).shape == (2, 2)  # large but finite


def test_check_labels_range_switch():
    y = torch.tensor([0, 3, -1])
    with pytest.raises(GradTuneInputError, match="labels must be >= 0, found -1"):
        check_labels(y, 3)
    assert check_labels(y, 3, check_range=False).tolist() == [0, 3, -1]
    with pytest.raises(GradTuneInputError, match="3 entries but 4 were expected"):
        check_labels(y, n=4, check_range=False)
