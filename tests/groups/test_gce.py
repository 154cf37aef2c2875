"""The GCE probe: its loss and gradient against autograd, its training against a reference loop."""

import numpy as np
import pytest
import torch

from gradtune import GradTuneInputError
from gradtune._threads import torch_threads
from gradtune.groups._heads import epoch_batches
from gradtune.groups.gce import GCEConfig, fit_gce_probe, gce_groups, gce_loss


def test_gce_loss_by_hand():
    z = torch.log(torch.tensor([[0.25, 0.75], [0.5, 0.5]], dtype=torch.float64))
    y = torch.tensor([1, 0])
    expect = ((1 - 0.75 ** 0.7) / 0.7 + (1 - 0.5 ** 0.7) / 0.7) / 2
    assert float(gce_loss(z, y)) == pytest.approx(expect, rel=1e-12)
    assert float(gce_loss(z, y, q=1.0)) == pytest.approx((0.25 + 0.5) / 2, rel=1e-12)


def reference_probe(x, y, c, cfg, seed):
    """nn.Linear + torch.optim.Adam + autograd of gce_loss over the same batches."""
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    xs = (x - mean) / torch.where(std > 0, std, torch.ones_like(std))
    g = torch.Generator().manual_seed(seed)
    batches = epoch_batches(torch.arange(x.shape[0]), cfg.n_steps, min(cfg.batch_size, x.shape[0]), g)
    lin = torch.nn.Linear(x.shape[1], c, dtype=x.dtype)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.Adam(lin.parameters(), lr=cfg.lr)
    for idx in batches:
        loss = gce_loss(lin(xs[idx]), y[idx], q=cfg.q)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lin.weight.detach(), lin.bias.detach()


@pytest.mark.parametrize("c,q", [(2, 0.7), (3, 0.3)])
def test_training_matches_autograd_reference(c, q):
    g = torch.Generator().manual_seed(c)
    x = torch.randn(90, 7, generator=g, dtype=torch.float64) * 2 + 1
    y = torch.randint(0, c, (90,), generator=g)
    cfg = GCEConfig(q=q, n_steps=120, batch_size=16, lr=1e-2)
    probe = fit_gce_probe(x, y, seed=4, config=cfg)
    with torch_threads(1):
        w, b = reference_probe(x, y, c, cfg, 4)
    torch.testing.assert_close(probe.weight, w, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(probe.bias, b, rtol=1e-9, atol=1e-10)


def test_groups_are_class_by_probe_mistake():
    g = torch.Generator().manual_seed(0)
    n = 400
    y = torch.randint(0, 2, (n,), generator=g)
    a = torch.where(torch.rand(n, generator=g) < 0.9, y, 1 - y)
    x = torch.randn(n, 5, generator=g)
    x[:, 0] += 8 * a
    r = gce_groups(x, y, seed=0, config=GCEConfig(n_steps=500))
    p = r.info["probe"].predict_proba(x).numpy()
    yy = y.numpy()
    wrong = p.argmax(1) != yy
    np.testing.assert_array_equal(r.minority, wrong)
    np.testing.assert_array_equal(r.groups, 2 * yy + wrong)
    np.testing.assert_allclose(r.scores, 1 - p[np.arange(n), yy], rtol=1e-6)
    assert r.method == "gce" and r.n_groups == 4 and r.info["q"] == 0.7
    # The probe follows the shortcut: its mistakes are the rows whose attribute contradicts the class.
    true = (a != y).numpy()
    assert (wrong & true).sum() / wrong.sum() > 0.9 and (wrong & true).sum() / true.sum() > 0.9


def test_errors():
    x = torch.randn(10, 3)
    y = torch.tensor([0, 1] * 5)
    with pytest.raises(GradTuneInputError, match="q"):
        GCEConfig(q=1.5)
    with pytest.raises(GradTuneInputError, match="q"):
        GCEConfig(q=0)
    with pytest.raises(GradTuneInputError, match="seed"):
        gce_groups(x, y, seed=None)
    probe = fit_gce_probe(x, y, seed=0, config=GCEConfig(n_steps=5))
    with pytest.raises(GradTuneInputError, match="columns"):
        probe.assign(torch.randn(4, 2), y[:4])
    with pytest.raises(GradTuneInputError, match="2-dimensional"):
        gce_loss(torch.zeros(3), torch.zeros(3, dtype=torch.int64))
