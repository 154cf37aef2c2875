"""The XRM authors' recipe (full-batch gradient descent, bias-free twins) against an autograd loop."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gradtune import GradTuneInputError
from gradtune.groups.xrm import XRM_AUTHORS, XRM_CONFIGS, XRMConfig, fit_xrm, xrm_groups


def _reference(x: torch.Tensor, y: torch.Tensor, c: int, seed: int, steps: int, lr: float,
               fit_bias: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Twins as two nn-style parameter sets, class-balanced CE by autograd, plain SGD, a
    rescaled-confidence flip after every step but the last (draws from one generator)."""
    n, d = x.shape
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    twin_of = torch.zeros(n, dtype=torch.int64)
    twin_of[perm[n // 2:]] = 1
    ws = [torch.zeros(c, d, dtype=x.dtype, requires_grad=True) for _ in range(2)]
    bs = [torch.zeros(c, dtype=x.dtype, requires_grad=fit_bias) for _ in range(2)]
    params = ws + (bs if fit_bias else [])
    opt = torch.optim.SGD(params, lr=lr)
    labels = y.clone()
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = torch.zeros((), dtype=x.dtype)
        for t in range(2):
            rows = twin_of == t
            ce = torch.nn.functional.cross_entropy(x[rows] @ ws[t].T + bs[t], labels[rows], reduction="none")
            per_class = [ce[labels[rows] == k].mean() for k in range(c) if (labels[rows] == k).any()]
            loss = loss + torch.stack(per_class).mean()
        loss.backward()
        opt.step()
        if step < steps:
            with torch.no_grad():
                held_out = torch.stack([torch.softmax(x @ ws[1 - int(t)].T + bs[1 - int(t)], -1)[i]
                                        for i, t in enumerate(twin_of.tolist())])
                conf, pred = held_out.max(dim=1)
                conf = (conf - 1.0 / c) * c / (c - 1.0)
                hit = torch.rand(n, generator=g, dtype=x.dtype) < conf
                labels = torch.where(hit, pred, labels)
    return torch.stack([w.detach() for w in ws]), torch.stack([b.detach() for b in bs]), labels


@pytest.mark.parametrize(("c", "fit_bias"), [(2, False), (3, True)])
def test_full_batch_twins_match_autograd_reference(c, fit_bias):
    g = torch.Generator().manual_seed(c)
    n, d = 60, 4
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, c, (n,), generator=g)
    cfg = dataclasses.replace(XRM_AUTHORS, n_steps=25, lr=0.5, fit_bias=fit_bias)
    twins = fit_xrm(x, y, seed=7, config=cfg)
    w, b, labels = _reference(x, y, c, seed=7, steps=25, lr=0.5, fit_bias=fit_bias)
    torch.testing.assert_close(twins.weight, w, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(twins.bias, b, rtol=1e-9, atol=1e-11)
    assert torch.equal(twins.final_labels, labels)
    assert twins.n_flipped == int((labels != y).sum())


def test_authors_recipe_finds_a_shortcut_minority_with_the_either_rule():
    g = torch.Generator().manual_seed(0)
    n, d = 800, 50
    y = torch.randint(0, 2, (n,), generator=g)
    a = torch.where(torch.rand(n, generator=g) < 0.95, y, 1 - y)
    va = torch.randint(0, 2, (d,), generator=g) * 2 - 1.0
    vy = torch.randint(0, 2, (d,), generator=g) * 2 - 1.0
    x = torch.randn(n, d, generator=g) + 0.5 * (2 * a[:, None] - 1.0) * va + 0.1 * (2 * y[:, None] - 1.0) * vy
    true = (a != y).numpy()
    r = xrm_groups(x, y, seed=0, config=XRM_CONFIGS["authors"], rule="either")
    both = (r.minority & true).sum()
    assert both / r.minority.sum() > 0.9 and both / true.sum() > 0.9


def test_named_configurations_and_errors():
    assert XRM_CONFIGS["default"] == XRMConfig()
    assert XRM_AUTHORS.optimizer == "full-batch-sgd" and not XRM_AUTHORS.fit_bias
    assert XRM_AUTHORS.flip_steps() == tuple(range(1, 3000))
    with pytest.raises(GradTuneInputError, match="optimizer"):
        XRMConfig(optimizer="lbfgs")
    x = np.random.default_rng(0).normal(size=(20, 3))
    y = np.arange(20) % 2
    t1 = fit_xrm(x, y, seed=1, config=dataclasses.replace(XRM_AUTHORS, n_steps=10))
    t2 = fit_xrm(x, y, seed=1, config=dataclasses.replace(XRM_AUTHORS, n_steps=10))
    assert torch.equal(t1.weight, t2.weight)
