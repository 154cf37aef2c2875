"""Selection: sizes, uniqueness, top-k containment, proportional draws, errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradtune import GradTuneInputError, select_finetune_set
from gradtune.selection import proportional_draw, random_subset, top_k_indices


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_properties(n, data):
    size = data.draw(st.integers(1, n))
    top_k = data.draw(st.integers(0, size))
    seed = data.draw(st.integers(0, 2**31))
    scores = np.random.default_rng(seed).exponential(size=n)
    idx = select_finetune_set(scores, size, top_k, seed=seed)
    assert idx.shape == (size,) and idx.dtype == np.int64
    assert len(np.unique(idx)) == size
    assert idx.min() >= 0 and idx.max() < n
    # The first top_k are exactly the k largest scores, in descending order.
    expected_top = np.argsort(-scores, kind="stable")[:top_k]
    assert set(idx[:top_k]) == set(expected_top)
    assert np.all(np.diff(scores[idx[:top_k]]) <= 0)
    # Deterministic for a seed.
    np.testing.assert_array_equal(idx, select_finetune_set(scores, size, top_k, seed=seed))


def test_size_equals_n_returns_everything():
    s = np.array([3.0, 1.0, 2.0, 0.0])
    idx = select_finetune_set(s, 4, 2, seed=0)
    assert sorted(idx) == [0, 1, 2, 3]
    assert list(idx[:2]) == [0, 2]


def test_ties_prefer_lower_index():
    s = np.array([1.0, 5.0, 5.0, 5.0, 0.5])
    assert list(top_k_indices(s, 2)) == [1, 2]


def test_proportional_draw_frequencies():
    """One draw without replacement: P(item i drawn first-and-only) = w_i / sum(w)."""
    w = np.array([1.0, 2.0, 3.0, 4.0, 0.0])
    rng = np.random.default_rng(0)
    trials = 12_000
    counts = np.zeros(5)
    for _ in range(trials):
        counts[proportional_draw(w, 1, rng)[0]] += 1
    expected = w / w.sum() * trials
    # chi-square with 3 dof on the positive cells; zero-weight item never drawn
    assert counts[4] == 0
    chi2 = ((counts[:4] - expected[:4]) ** 2 / expected[:4]).sum()
    assert chi2 < 16.27  # p = 0.001


def test_successive_sampling_second_draw():
    """Without replacement, P(second = j | first = i) = w_j / (W - w_i): check P(set == {0, 1})."""
    w = np.array([1.0, 2.0, 3.0])
    rng = np.random.default_rng(1)
    trials = 10_000
    hits = sum(set(proportional_draw(w, 2, rng).tolist()) == {0, 1} for _ in range(trials))
    p = (1 / 6) * (2 / 5) + (2 / 6) * (1 / 4)
    se = np.sqrt(p * (1 - p) / trials)
    assert abs(hits / trials - p) < 4 * se


def test_rest_proportional_in_select():
    """The M'-k extra samples come from outside the top-k, in proportion to score."""
    scores = np.array([100.0, 90.0, 1.0, 3.0])
    rng = np.random.default_rng(0)
    picks = np.array([select_finetune_set(scores, 3, 2, seed=rng)[2] for _ in range(4000)])
    assert set(picks) <= {2, 3}
    frac3 = (picks == 3).mean()
    assert abs(frac3 - 0.75) < 4 * np.sqrt(0.75 * 0.25 / 4000)


def test_zero_scores_fill_uniformly():
    scores = np.array([5.0, 0.0, 0.0, 0.0, 1.0])
    idx = select_finetune_set(scores, 4, 1, seed=0)
    assert len(set(idx)) == 4 and idx[0] == 0 and 4 in idx


def test_with_replacement():
    scores = np.array([5.0, 1.0, 1.0])
    idx = select_finetune_set(scores, 3, 1, seed=0, replace=True)
    assert idx.shape == (3,) and idx[0] == 0 and set(idx[1:]) <= {1, 2}


@pytest.mark.parametrize(
    "scores, size, top_k, match",
    [
        (np.ones(10), 5, 6, "must not exceed size"),
        (np.ones(10), 11, 2, "exceeds the number of held-out samples"),
        (np.array([1.0, -1.0, 2.0]), 2, 1, "non-negative"),
        (np.array([1.0, np.nan, 2.0]), 2, 1, "NaN"),
        (np.ones((2, 2)), 2, 1, "1-dimensional"),
        (np.ones(10), 0, 0, "> 0"),
    ],
)
def test_errors(scores, size, top_k, match):
    with pytest.raises(GradTuneInputError, match=match):
        select_finetune_set(scores, size, top_k, seed=0)


def test_seed_required():
    with pytest.raises(GradTuneInputError, match="seed"):
        select_finetune_set(np.ones(5), 3, 1, seed=None)


def test_random_subset():
    idx = random_subset(100, 30, seed=3)
    assert len(set(idx)) == 30 and idx.max() < 100
    with pytest.raises(GradTuneInputError):
        random_subset(5, 6, seed=0)
