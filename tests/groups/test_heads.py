"""The batched head trainer's pieces against autograd and torch.optim.Adam."""

import pytest
import torch

from gradtune.groups._heads import (
    ce_logit_grad,
    epoch_batches,
    gce_logit_grad,
    stack_logits,
    train_heads,
)


def test_ce_logit_grad_matches_autograd():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 7, generator=g, dtype=torch.float64) * 3     # (T, C, B)
    y = torch.randint(0, 4, (3, 7), generator=g)
    zz = z.clone().requires_grad_(True)
    # Sum of per-sample losses: its gradient w.r.t. each logit column is that sample's gradient.
    loss = torch.nn.functional.cross_entropy(zz.permute(0, 2, 1).reshape(-1, 4), y.reshape(-1),
                                             reduction="sum")
    (expect,) = torch.autograd.grad(loss, zz)
    torch.testing.assert_close(ce_logit_grad(z, y), expect)


@pytest.mark.parametrize("q", [0.1, 0.7, 1.0])
def test_gce_logit_grad_matches_autograd(q):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 3, 9, generator=g, dtype=torch.float64) * 4
    z[0, :, 0] = torch.tensor([30.0, -30.0, 0.0])                       # p_y tiny for y = 1
    y = torch.randint(0, 3, (2, 9), generator=g)
    y[0, 0] = 1
    zz = z.clone().requires_grad_(True)
    p_y = torch.softmax(zz, dim=1).gather(1, y[:, None, :]).squeeze(1)
    loss = ((1 - p_y ** q) / q).sum()
    (expect,) = torch.autograd.grad(loss, zz)
    torch.testing.assert_close(gce_logit_grad(z, y, q), expect, rtol=1e-10, atol=1e-14)


def test_train_heads_matches_torch_adam_per_head():
    """Three heads with different batches equal three nn.Linear trained by torch.optim.Adam."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (50,), generator=g)
    batches = torch.randint(0, 50, (40, 3, 8), generator=g)
    w0 = torch.randn(3, 3, 6, generator=g, dtype=torch.float64)
    b0 = torch.randn(3, 3, generator=g, dtype=torch.float64)
    w, b = w0.clone(), b0.clone()
    seen = []
    train_heads(x, y, batches, w, b, logit_grad=ce_logit_grad, lr=0.05, betas=(0.8, 0.99),
                eps=1e-6, hook=lambda s, *_: seen.append(s))
    assert seen == list(range(1, 41))
    for t in range(3):
        lin = torch.nn.Linear(6, 3, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(w0[t])
            lin.bias.copy_(b0[t])
        opt = torch.optim.Adam(lin.parameters(), lr=0.05, betas=(0.8, 0.99), eps=1e-6)
        for s in range(40):
            idx = batches[s, t]
            loss = torch.nn.functional.cross_entropy(lin(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        torch.testing.assert_close(w[t], lin.weight.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(b[t], lin.bias.detach(), rtol=1e-10, atol=1e-12)


def test_epoch_batches_are_reshuffled_passes():
    g = torch.Generator().manual_seed(3)
    members = torch.tensor([3, 8, 9, 20, 21])
    out = epoch_batches(members, 6, 4, g)          # 24 draws: 4 full passes + 4
    assert out.shape == (6, 4)
    flat = out.reshape(-1)
    for k in range(4):
        assert sorted(flat[5 * k:5 * k + 5].tolist()) == members.tolist()
    assert set(flat[20:].tolist()) <= set(members.tolist()) and len(set(flat[20:].tolist())) == 4


def test_stack_logits_per_head():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(11, 5, generator=g, dtype=torch.float64)
    w = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    b = torch.randn(2, 3, generator=g, dtype=torch.float64)
    expect = torch.stack([x @ w[t].T + b[t] for t in range(2)])
    torch.testing.assert_close(stack_logits(x, w, b), expect)
