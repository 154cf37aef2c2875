"""split_heldout: a seeded partition of the validation rows into held-out and selection halves."""

from __future__ import annotations

import numpy as np
import pytest

from gradtune.data.base import split_heldout


@pytest.mark.parametrize("n, fraction", [(10, 0.5), (11, 0.5), (200, 0.3), (7, 1.0)])
def test_split_is_a_sorted_partition_of_the_given_rows(n, fraction):
    rows = np.arange(1000, 1000 + 3 * n, 3)  # arbitrary, non-contiguous row ids
    held, sel = split_heldout(rows, seed=4, fraction=fraction)
    assert held.size == int(round(n * fraction)) and held.size + sel.size == n
    assert np.array_equal(np.sort(np.concatenate([held, sel])), rows)
    assert np.all(np.diff(held) > 0) and np.all(np.diff(sel) > 0)


def test_split_is_the_seeded_permutation():
    rows = np.arange(30)
    perm = np.random.default_rng(9).permutation(rows)  # the documented draw
    held, sel = split_heldout(rows, seed=9)
    assert np.array_equal(held, np.sort(perm[:15])) and np.array_equal(sel, np.sort(perm[15:]))
    again, _ = split_heldout(rows, seed=9)
    other, _ = split_heldout(rows, seed=10)
    assert np.array_equal(held, again) and not np.array_equal(held, other)
