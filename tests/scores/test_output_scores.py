"""Output-based scores against autograd / torch's own losses and hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from gradtune._validation import GradTuneInputError
from gradtune.scores.output_scores import (
    correct_mask,
    cross_entropy_scores,
    disagreement_scores,
    true_class_probability,
)


def _data(seed: int = 0, n: int = 50, c: int = 4):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=gen, dtype=torch.float64) * 3, torch.randint(0, c, (n,), generator=gen)


def test_cross_entropy_is_torchs_unreduced_loss():
    z, y = _data()
    torch.testing.assert_close(cross_entropy_scores(z, y), torch.nn.functional.cross_entropy(z, y, reduction="none"))


def test_true_class_probability_and_correct_mask_by_hand():
    z, y = _data(1)
    p = true_class_probability(z, y)
    for i in range(5):  # a slow reference loop over a few rows
        row = [math.exp(v) for v in z[i].tolist()]
        assert p[i].item() == pytest.approx(row[int(y[i])] / sum(row), rel=1e-12)
    assert torch.equal(correct_mask(z, y), torch.tensor([int(r.argmax()) == int(t) for r, t in zip(z, y, strict=True)]))


def test_disagreement_is_torchs_kl_divergence():
    a, _ = _data(2)
    b, _ = _data(3)
    ref = torch.nn.functional.kl_div(torch.log_softmax(b, 1), torch.log_softmax(a, 1), reduction="none",
                                     log_target=True).sum(1)
    torch.testing.assert_close(disagreement_scores(a, b), ref)
    assert torch.all(disagreement_scores(a, a) == 0)


def test_bad_inputs_are_named():
    z, y = _data()
    with pytest.raises(GradTuneInputError, match="at least 2 columns"):
        cross_entropy_scores(z[:, :1], torch.zeros(len(z), dtype=torch.int64))
    with pytest.raises(GradTuneInputError, match="same shape"):
        disagreement_scores(z, z[:10])
    with pytest.raises(GradTuneInputError):
        cross_entropy_scores(z, y[:10])
