"""Group DRO's update against the formula, its loss against autograd, the head loop
against torch.optim.SGD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradtune.embeddings.bundle import BundleError, EmbeddingBundle
from gradtune.methods import GroupDROMethod
from gradtune.methods.group_dro import _train_head
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


def test_head_loop_matches_autograd_reference():
    rng = np.random.default_rng(0)
    n, d, c, n_groups = 48, 4, 2, 4
    h = torch.tensor(rng.normal(size=(n, d)), dtype=torch.float64)
    y = torch.tensor(rng.integers(0, c, n))
    g = torch.tensor(rng.integers(0, n_groups, n))
    counts = torch.bincount(g, minlength=n_groups).to(torch.float64)
    theta0 = torch.tensor(rng.normal(size=(c, d + 1)), dtype=torch.float64)
    kw = dict(epochs=2, batch_size=16, lr=0.1, momentum=0.9, weight_decay=0.01, eta=0.3, adj=1.0)
    theta, q = _train_head(h, y, g, theta0.clone(), n_groups, counts, gen=torch.Generator().manual_seed(5), **kw)

    # reference: nn.Linear-style parameters, GroupDROLoss, torch.optim.SGD, same batches
    W = theta0[:, :d].clone().requires_grad_(True)
    B = theta0[:, d].clone().requires_grad_(True)
    opt = torch.optim.SGD([W, B], lr=0.1, momentum=0.9, weight_decay=0.01)
    loss_fn = GroupDROLoss(counts.numpy(), eta=0.3, adj=1.0)
    gen = torch.Generator().manual_seed(5)
    weights = 1.0 / counts[g]
    for _ in range(2):
        order = torch.multinomial(weights, n, replacement=True, generator=gen)
        for idx in order.split(16):
            opt.zero_grad()
            loss_fn(h[idx] @ W.T + B, y[idx], g[idx], idx).backward()
            opt.step()
    np.testing.assert_allclose(theta[:, :d].numpy(), W.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(theta[:, d].numpy(), B.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(q.numpy(), loss_fn.q.numpy(), rtol=1e-9)


def test_method_declares_and_needs_groups(bundle):
    assert GroupDROMethod.uses_group_labels_train is True
    res = GroupDROMethod(epochs=3).fit(bundle, seed=0)
    q = np.array(res.diagnostics["final_group_weights"])
    assert q.shape == (4,) and q.sum() == pytest.approx(1.0, abs=1e-5)
    b = EmbeddingBundle(features=bundle.features, labels=bundle.labels, split=bundle.split,
                        head_weight=bundle.head_weight, head_bias=bundle.head_bias, n_classes=2)
    with pytest.raises(BundleError, match="group labels"):
        GroupDROMethod(epochs=1).fit(b, seed=0)
