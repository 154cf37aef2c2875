"""JTT's error set and upsampled list against direct counts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradtune.objectives.jtt import jtt_error_set, jtt_upsampled_indices


def test_error_set_direct_count():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 3))
    labels = rng.integers(0, 3, 200)
    errors = jtt_error_set(logits, labels)
    direct = [i for i in range(200) if int(np.argmax(logits[i])) != int(labels[i])]
    assert errors.tolist() == direct


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 40), lam=st.integers(1, 7), data=st.data())
def test_upsampled_counts(n, lam, data):
    errors = np.array(sorted(data.draw(st.sets(st.integers(0, max(n - 1, 0)), max_size=n))) if n else [],
                      dtype=np.int64)
    idx = jtt_upsampled_indices(n, errors, lam)
    counts = np.bincount(idx, minlength=n)
    expected = np.ones(n, dtype=np.int64)
    expected[errors] = lam
    assert counts.tolist() == expected.tolist()
    assert idx[:n].tolist() == list(range(n))  # ConcatDataset order: the set, then the copies
    assert idx.size == n + (lam - 1) * errors.size


def test_upsampled_rejects_bad_input():
    with pytest.raises(ValueError):
        jtt_upsampled_indices(5, [5], 3)
    with pytest.raises(ValueError):
        jtt_upsampled_indices(5, [1], 0)
