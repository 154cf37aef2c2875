"""Group DRO's update against the formula, its loss against autograd, the head loop
against torch.optim.SGD."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradtune.embeddings.bundle import BundleError, EmbeddingBundle
from gradtune.methods import GroupDROMethod
from gradtune.methods.group_dro import _train_head
from gradtune.objectives.group_dro import GroupDROLoss


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
