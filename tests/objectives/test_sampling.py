"""Balanced subsamples, inverse-frequency weights and weighted epoch orders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from gradtune.objectives.sampling import balanced_subsample, epoch_order, inverse_frequency_weights


@settings(max_examples=40, deadline=None)
@given(keys=st.lists(st.integers(0, 4), min_size=1, max_size=60), seed=st.integers(0, 2**32 - 1))
def test_balanced_subsample_properties(keys, seed):
    k = np.array(keys)
    idx = balanced_subsample(k, seed)
    values, counts = np.unique(k, return_counts=True)
    assert np.unique(idx).size == idx.size  # distinct rows
    sub_values, sub_counts = np.unique(k[idx], return_counts=True)
    assert sub_values.tolist() == values.tolist()
    assert set(sub_counts.tolist()) == {int(counts.min())}
    np.testing.assert_array_equal(idx, balanced_subsample(k, seed))  # reproducible


def test_balanced_subsample_is_uniform_within_a_key():
    keys = np.array([0] * 10 + [1] * 3)
    hits = np.zeros(10)
    rng = np.random.default_rng(0)
    for _ in range(3000):
        idx = balanced_subsample(keys, rng)
        hits += np.bincount(idx[idx < 10], minlength=10)
    assert hits.sum() == 3000 * 3
    assert chisquare(hits).pvalue > 1e-3


@pytest.mark.parametrize("keys", [np.array([0] * 90 + [1] * 10), np.array([0] * 50 + [1] * 30 + [2] * 15 + [3] * 5)])
def test_reweighting_sampler_frequencies(keys):
    """The 'weighted' sampler with 1/n_key weights draws every key equally often."""
    gen = torch.Generator().manual_seed(0)
    w = torch.as_tensor(inverse_frequency_weights(keys))
    labels = torch.zeros(keys.size, dtype=torch.int64)
    draws = torch.cat([epoch_order(labels, "weighted", gen, w) for _ in range(200)]).numpy()
    freq = np.bincount(keys[draws], minlength=keys.max() + 1)
    assert chisquare(freq).pvalue > 1e-3
    np.testing.assert_allclose(freq / freq.sum(), 1 / freq.size, atol=0.02)


def test_inverse_frequency_weights_sum_per_key():
    keys = np.array([3, 3, 1, 3, 1, 7])
    w = inverse_frequency_weights(keys)
    for v in (1, 3, 7):
        assert w[keys == v].sum() == pytest.approx(1.0)
