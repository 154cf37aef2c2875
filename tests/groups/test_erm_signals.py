"""Early-stop disagreement and gradient-norm splits against hand counts and hand norms."""

import math

import numpy as np
import pytest
import torch

from gradtune import GradTuneInputError
from gradtune.groups.erm_signals import (
    early_disagreement_groups,
    grad_norm_groups,
    top_fraction_per_class,
)


def test_early_disagreement_by_hand():
    final = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0], [0.5, 0.0]])
    early = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 1.0], [0.4, 0.0]])
    labels = torch.tensor([0, 1, 0, 1, 1])
    r = early_disagreement_groups(final, early, labels)
    # argmax final 0,1,0,1,0; early 0,0,1,1,0: rows 1 and 2 disagree.
    np.testing.assert_array_equal(r.minority, [False, True, True, False, False])
    np.testing.assert_array_equal(r.groups, [0, 3, 1, 2, 2])
    assert r.n_groups == 4 and r.info["n_disagree"] == 2
    np.testing.assert_array_equal(r.counts(), [1, 1, 2, 1])
    # KL(p_early || p_final) for row 1: early softmax(1, 0), final softmax(0, 1).
    pe = np.array([math.e, 1]) / (math.e + 1)
    pf = np.array([1, math.e]) / (1 + math.e)
    assert r.scores[1] == pytest.approx(float((pe * np.log(pe / pf)).sum()), rel=1e-5)
    assert r.scores[0] > 0 and r.scores[3] > 0 and r.method == "early-disagreement"


def test_early_disagreement_errors():
    z = torch.zeros(4, 2)
    with pytest.raises(GradTuneInputError, match="same rows"):
        early_disagreement_groups(z, torch.zeros(3, 2), [0, 1, 0, 1])
    with pytest.raises(GradTuneInputError, match="< 2"):
        early_disagreement_groups(z, z, [0, 1, 2, 1])
    with pytest.raises(GradTuneInputError, match="entries"):
        early_disagreement_groups(z, z, [0, 1, 0])
    with pytest.raises(GradTuneInputError, match="at least 2 columns"):
        early_disagreement_groups(torch.zeros(4, 1), torch.zeros(4, 1), [0, 0, 0, 0])


def test_top_fraction_per_class_by_hand():
    scores = np.array([5.0, 1.0, 3.0, 3.0, 9.0, 0.0, 2.0, 7.0, 4.0, 6.0])
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    # fraction 0.3: ceil(1.5) = 2 per class. Class 0: 9 (row 4), 5 (row 0). Class 1: 7, 6.
    top = top_fraction_per_class(scores, labels, 0.3, 2)
    np.testing.assert_array_equal(np.flatnonzero(top), [0, 4, 7, 9])
    # fraction 0.5: ceil(2.5) = 3; class 0's third place is a tie between rows 2 and 3: row 2.
    top = top_fraction_per_class(scores, labels, 0.5, 2)
    np.testing.assert_array_equal(np.flatnonzero(top), [0, 2, 4, 7, 8, 9])
    # Float noise does not round up: 0.1 * 30 rows is 3 rows, not 4.
    many = top_fraction_per_class(np.arange(30.0), np.zeros(30, dtype=np.int64), 0.1, 2)
    np.testing.assert_array_equal(np.flatnonzero(many), [27, 28, 29])


def test_grad_norm_groups_against_hand_norms():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(40, 5, generator=g, dtype=torch.float64)
    w = torch.randn(3, 5, generator=g, dtype=torch.float64)
    b = torch.randn(3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    p = torch.softmax(h @ w.T + b, dim=1).numpy()
    yy = y.numpy()
    resid = p - np.eye(3)[yy]
    norms = np.linalg.norm(resid, axis=1) * np.sqrt((h.numpy() ** 2).sum(1) + 1)
    r = grad_norm_groups(h, y, weight=w, bias=b, fraction=0.25)
    np.testing.assert_allclose(r.scores, norms, rtol=1e-10)
    for k in range(3):
        rows = np.flatnonzero(yy == k)
        n_top = math.ceil(0.25 * rows.size)
        expect = rows[np.argsort(-norms[rows], kind="stable")[:n_top]]
        np.testing.assert_array_equal(np.flatnonzero(r.minority & (yy == k)), np.sort(expect))
    np.testing.assert_array_equal(r.groups, 2 * yy + r.minority)
    assert r.n_groups == 6 and r.info["fraction"] == 0.25
    # Logits instead of the head; no bias in the gradient.
    r2 = grad_norm_groups(h, y, logits=h @ w.T + b, fraction=0.25, include_bias=False)
    np.testing.assert_allclose(r2.scores, np.linalg.norm(resid, axis=1) * np.linalg.norm(h.numpy(), axis=1),
                               rtol=1e-10)


def test_grad_norm_errors():
    h = torch.randn(6, 2)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    with pytest.raises(GradTuneInputError, match="weight"):
        grad_norm_groups(h, y)
    with pytest.raises(GradTuneInputError, match="between 0 and 1"):
        grad_norm_groups(h, y, weight=torch.zeros(2, 2), fraction=1.0)
    with pytest.raises(GradTuneInputError, match="labels"):
        grad_norm_groups(h, torch.tensor([0, 1, 0, 1, 0, 5]), weight=torch.zeros(2, 2))
