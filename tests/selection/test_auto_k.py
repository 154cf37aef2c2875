"""Automatic k and M' from a two-component mixture on log gradient norms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradtune._validation import GradTuneInputError
from gradtune.selection.auto_k import PAPER_SIZE, auto_set_size, fit_log_norm_mixture


def bimodal(n_low: int, n_high: int, seed: int = 0) -> np.ndarray:
    """Log-norms: a wide low mode at -6 and a narrow high mode at 0 (well separated)."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(-6.0, 1.2, n_low), rng.normal(0.0, 0.3, n_high)])
    return np.exp(rng.permutation(x))


def test_high_mode_of_150_gives_k_near_150() -> None:
    norms = bimodal(850, 150)
    size, top_k, info = auto_set_size(norms, seed=0)
    assert info["rule"] == "mixture"
    assert abs(info["n_high"] - 150) <= 3
    assert abs(top_k - 150) <= 3
    assert size == max(100, math.ceil(info["n_high"] / 0.8))
    assert 0.05 < info["threshold"] < 1.0  # between the modes (exp(-6) .. exp(0))
    assert info["separation"] > 2


def test_high_rows_are_the_top_norms() -> None:
    norms = bimodal(850, 150)
    fit = fit_log_norm_mixture(norms, seed=0)
    high = fit["posterior_high"] > 0.5
    assert norms[high].min() > norms[~high].max() * 0.999


def test_small_heldout_is_clipped_up() -> None:
    norms = bimodal(270, 30)  # a 300-row held-out set with 30 hard rows
    size, top_k, info = auto_set_size(norms, seed=0)
    assert info["rule"] == "mixture"
    assert size == 100  # min_size
    assert abs(top_k - 30) <= 2  # the rest of the 100 is a norm-proportional draw


def test_tiny_heldout_never_exceeds_n() -> None:
    norms = bimodal(60, 10)
    size, top_k, _ = auto_set_size(norms, seed=0)
    assert size == min(70, 100) and top_k <= size


def test_large_heldout_is_clipped_down() -> None:
    norms = bimodal(33000, 8000)  # a 41k held-out set
    size, top_k, info = auto_set_size(norms, seed=0, max_size=2000)
    assert info["rule"] == "mixture" and abs(info["n_high"] - 8000) < 100
    assert size == 2000 and top_k == 1600


def test_majority_high_mode_falls_back_to_paper() -> None:
    norms = bimodal(300, 700)  # the "high" mode is most of the data: no minority mode
    size, top_k, info = auto_set_size(norms, seed=0)
    assert info["rule"] == "paper" and "degenerate" in info["reason"]
    assert (size, top_k) == (PAPER_SIZE, 400)


def test_few_rows_or_values_fall_back() -> None:
    assert auto_set_size(np.linspace(0.1, 1, 10), seed=0)[2]["rule"] == "paper"
    assert auto_set_size(np.ones(50), seed=0)[:2] == (50, 40)


def test_deterministic_and_validated() -> None:
    norms = bimodal(850, 150, seed=3)
    assert auto_set_size(norms, seed=1)[:2] == auto_set_size(norms, seed=1)[:2]
    with pytest.raises(GradTuneInputError):
        auto_set_size(-norms, seed=0)
    with pytest.raises(GradTuneInputError):
        auto_set_size(norms, seed=0, k_share=1.5)
    with pytest.raises(GradTuneInputError):
        auto_set_size(norms, seed=0, min_size=500, max_size=100)
    with pytest.raises(GradTuneInputError):
        auto_set_size(np.array([]), seed=0)


def test_zero_norms_are_floored() -> None:
    norms = bimodal(850, 150)
    norms[:20] = 0.0
    size, top_k, info = auto_set_size(norms, seed=0)
    assert info["rule"] == "mixture" and abs(top_k - 150) <= 3
