"""Group DRO's objective: the weight update by hand, the loss against its formula and autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradtune.objectives.group_dro import GroupDROLoss, group_dro_update, group_mean_losses


def test_update_hand_numbers():
    q = [0.25, 0.25, 0.25, 0.25]
    losses = [1.0, 2.0, 0.0, 0.5]
    counts = [100, 25, 4, 1]
    eta, adj = 0.1, 2.0
    # adjusted = [1 + 2/10, 2 + 2/5, 0 + 2/2, 0.5 + 2/1] = [1.2, 2.4, 1.0, 2.5]
    raw = [0.25 * math.exp(0.1 * a) for a in (1.2, 2.4, 1.0, 2.5)]
    expected = [r / sum(raw) for r in raw]
    out = group_dro_update(torch.tensor(q, dtype=torch.float64), torch.tensor(losses, dtype=torch.float64),
                           counts, eta, adj)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)


def test_update_no_adjustment_and_zero_count():
    q = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    out = group_dro_update(q, torch.tensor([3.0, 0.0, 1.0], dtype=torch.float64), [10, 0, 5], 0.01, 1.0)
    raw = np.array([0.5 * math.exp(0.01 * (3 + 1 / math.sqrt(10))), 0.3, 0.2 * math.exp(0.01 * (1 + 1 / math.sqrt(5)))])
    np.testing.assert_allclose(out.numpy(), raw / raw.sum(), rtol=1e-12)


def test_update_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        group_dro_update([0.5, 0.5], [1.0, 2.0, 3.0], [1, 1], 0.01)


def test_loss_callable_matches_formula_and_gradient():
    torch.manual_seed(0)
    logits = torch.randn(10, 2, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 2, (10,))
    groups = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 0])
    loss_fn = GroupDROLoss([50, 20, 5, 1], eta=0.5, adj=1.0)
    out = loss_fn(logits, labels, groups, torch.arange(10))
    per = torch.nn.functional.cross_entropy(logits.detach(), labels, reduction="none")
    g_loss = torch.stack([per[groups == g].mean() if (groups == g).any() else per.new_zeros(())
                          for g in range(4)])
    q = group_dro_update(torch.full((4,), 0.25, dtype=torch.float64), g_loss, [50, 20, 5, 1], 0.5, 1.0)
    assert float(out.detach()) == pytest.approx(float((q * g_loss).sum()))
    np.testing.assert_allclose(loss_fn.q.numpy(), q.numpy(), rtol=1e-6)
    out.backward()
    assert torch.isfinite(logits.grad).all()
    state = loss_fn.state_dict()
    fresh = GroupDROLoss([50, 20, 5, 1], eta=0.5, adj=1.0)
    fresh.load_state_dict(state)
    np.testing.assert_allclose(fresh.q.numpy(), loss_fn.q.numpy())


def test_group_mean_losses():
    per = torch.tensor([1.0, 3.0, 5.0, 7.0])
    losses, counts = group_mean_losses(per, torch.tensor([0, 0, 2, 2]), 3)
    assert losses.tolist() == [2.0, 0.0, 6.0]
    assert counts.tolist() == [2.0, 0.0, 2.0]
