"""Pseudo-group shares among unlabeled deployment rows (BBSE or EM under label shift) and accuracy under them."""
from __future__ import annotations

import numpy as np
import pytest

from gradtune._validation import GradTuneInputError
from gradtune.selection import shift
from gradtune.selection.shift import deployment_accuracy, deployment_shares, shares_accuracy

CENTRES = np.array([[0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]])


def _rows(shares: list[float], n: int, rng: np.random.Generator, spread: float = 0.5
          ) -> tuple[np.ndarray, np.ndarray]:
    """n rows drawn group by group (exact counts), each group a Gaussian blob around its centre."""
    counts = np.round(np.asarray(shares) * n).astype(int)
    g = np.repeat(np.arange(len(shares)), counts)
    x = CENTRES[g] + spread * rng.normal(size=(len(g), CENTRES.shape[1]))
    return x, g


def test_shares_accuracy_by_hand() -> None:
    correct = np.array([[1, 1, 0, 0, 1, 0],
                        [1, 0, 1, 1, 0, 0]], dtype=bool)
    groups = np.array([0, 0, 1, 1, 2, 2])
    # per group: head 0 (1, 0, 1/2), head 1 (1/2, 1, 0)
    got = shares_accuracy(correct, groups, np.array([0.5, 0.25, 0.25]))
    np.testing.assert_allclose(got, [0.5 * 1 + 0.25 * 0 + 0.25 * 0.5, 0.5 * 0.5 + 0.25 * 1 + 0])
    # a group with no row here drops out and the others are renormalized
    got = shares_accuracy(correct[:, :4], groups[:4], np.array([0.5, 0.25, 0.25]))
    np.testing.assert_allclose(got, [(0.5 * 1 + 0.25 * 0) / 0.75, (0.5 * 0.5 + 0.25 * 1) / 0.75])
    # equal shares: the mean over groups; the shares of the rows themselves: plain accuracy
    np.testing.assert_allclose(shares_accuracy(correct, groups, np.full(3, 1 / 3)), [0.5, 0.5])
    uneven = np.array([0, 0, 0, 1, 1, 2])
    np.testing.assert_allclose(shares_accuracy(correct, uneven, np.array([3, 2, 1]) / 6), correct.mean(axis=1))


def test_recovers_a_known_shift_and_reports_none_without_one() -> None:
    rng = np.random.default_rng(0)
    x_val, g_val = _rows([0.6, 0.3, 0.1], 1500, rng)
    x_dep, _ = _rows([0.2, 0.3, 0.5], 3000, rng)
    val, dep = deployment_shares(x_val, g_val, x_dep, 3, rng=np.random.default_rng(1))
    np.testing.assert_allclose(val, [0.6, 0.3, 0.1])
    np.testing.assert_allclose(dep, [0.2, 0.3, 0.5], atol=0.03)
    assert dep.sum() == pytest.approx(1.0)
    x_same, _ = _rows([0.6, 0.3, 0.1], 3000, rng)
    _, same = deployment_shares(x_val, g_val, x_same, 3, rng=np.random.default_rng(1))
    np.testing.assert_allclose(same, [0.6, 0.3, 0.1], atol=0.03)


@pytest.mark.parametrize("method", ["bbse", "em"])
def test_both_estimates_beat_averaging_probabilities_when_groups_overlap(method: str) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    x_val, g_val = _rows([0.7, 0.2, 0.1], 3000, rng, spread=1.5)
    x_dep, _ = _rows([0.2, 0.3, 0.5], 6000, rng, spread=1.5)
    truth = np.array([0.2, 0.3, 0.5])
    _, dep = deployment_shares(x_val, g_val, x_dep, 3, rng=np.random.default_rng(3), method=method)
    naive = LogisticRegression(max_iter=1000).fit(x_val, g_val).predict_proba(x_dep).mean(axis=0)
    assert np.abs(dep - truth).max() < 0.05
    assert np.abs(naive - truth).max() > 2 * np.abs(dep - truth).max()


def test_bbse_is_stable_with_a_group_of_a_few_rows() -> None:
    # a 1.5% group (9 rows): the stratified folds keep it in every classifier's rows, and
    # without a shift the estimate stays at the validation shares whatever the fold draw
    rng = np.random.default_rng(10)
    x_val, g_val = _rows([0.5, 0.015, 0.485], 600, rng, spread=1.0)
    x_dep, _ = _rows([0.5, 0.015, 0.485], 2000, rng, spread=1.0)
    for seed in range(5):
        _, dep = deployment_shares(x_val, g_val, x_dep, 3, rng=np.random.default_rng(seed))
        np.testing.assert_allclose(dep, [0.5, 0.015, 0.485], atol=0.04)


def test_chunked_reading_of_the_deployment_rows_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    x_val, g_val = _rows([0.5, 0.3, 0.2], 600, rng)
    x_dep, _ = _rows([0.3, 0.3, 0.4], 1000, rng)
    whole = deployment_shares(x_val, g_val, x_dep, 3, rng=np.random.default_rng(5))[1]
    monkeypatch.setattr(shift, "_CHUNK", 97)
    chunked = deployment_shares(x_val, g_val, x_dep, 3, rng=np.random.default_rng(5))[1]
    np.testing.assert_allclose(chunked, whole, rtol=1e-10, atol=1e-12)


def test_one_group_or_an_unused_id_is_handled() -> None:
    rng = np.random.default_rng(6)
    x_val, _ = _rows([1.0], 50, rng)
    val, dep = deployment_shares(x_val, np.zeros(50, dtype=int), x_val, 4, rng=rng)
    np.testing.assert_array_equal(val, [1, 0, 0, 0])
    np.testing.assert_array_equal(dep, val)
    x_val, g_val = _rows([0.5, 0.5], 400, rng)          # ids 0 and 1 of four
    val, dep = deployment_shares(x_val, g_val, x_val, 4, rng=rng)
    assert dep[2] == dep[3] == 0 and dep.sum() == pytest.approx(1.0)


def test_deployment_accuracy_averages_the_halves() -> None:
    rng = np.random.default_rng(7)
    halves = []
    for _ in range(2):
        x, g = _rows([0.8, 0.2], 400, rng)
        correct = np.stack([g == 0, np.ones(len(g), dtype=bool) & (rng.random(len(g)) < 0.9)])
        halves.append((correct, g, x))
    x_dep, _ = _rows([0.2, 0.8], 800, rng)
    acc, shares = deployment_accuracy(halves, x_dep, 2, rng=np.random.default_rng(8))
    by_hand = np.mean([shares_accuracy(ok, g, dep) for (ok, g, _), (_, dep) in zip(halves, shares, strict=True)],
                      axis=0)
    np.testing.assert_allclose(acc, by_hand)
    # the head right only on group 0 is worth about 0.2 where group 1 makes up 0.8
    assert acc[0] == pytest.approx(0.2, abs=0.05) and acc[1] == pytest.approx(0.9, abs=0.05)


@pytest.mark.parametrize("case, match", [
    ("width", "same width"), ("empty", "no rows"), ("ids", r"one id in \[0, 3\)"), ("folds", "n_folds"),
    ("method", "'bbse' or 'em'")])
def test_bad_input_is_named(case: str, match: str) -> None:
    rng = np.random.default_rng(9)
    x_val, g_val = _rows([0.5, 0.5], 40, rng)
    x_dep = x_val
    if case == "width":
        x_dep = x_val[:, :2]
    elif case == "empty":
        x_dep = x_val[:0]
    elif case == "ids":
        g_val = g_val + 2
    kw = {"n_folds": 1} if case == "folds" else {"method": "mle"} if case == "method" else {}
    with pytest.raises(GradTuneInputError, match=match):
        deployment_shares(x_val, g_val, x_dep, 3, rng=rng, **kw)
