"""The shared last-layer loop: every objective against autograd + torch.optim.SGD on the same batches."""

from __future__ import annotations

import math

import pytest
import torch

from gradtune._validation import GradTuneInputError
from gradtune.finetune.head_loop import (
    AFRObjective,
    CrossEntropy,
    GroupDROObjective,
    LogitAdjusted,
    augment,
    full_batch_sampler,
    permutation_sampler,
    train_head,
    weighted_sampler,
)

N, D, C, G = 41, 5, 3, 4


def _problem(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"h": torch.randn(N, D, generator=gen, dtype=torch.float64),
            "y": torch.randint(0, C, (N,), generator=gen),
            "g": torch.randint(0, G, (N,), generator=gen),
            "b": torch.randint(0, C, (N,), generator=gen),
            "w": torch.rand(N, generator=gen, dtype=torch.float64) + 0.1,
            "theta": torch.randn(C, D + 1, generator=gen, dtype=torch.float64)}


def _orders(epochs: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randperm(N, generator=gen) for _ in range(epochs)]


def _reference(theta0: torch.Tensor, ha: torch.Tensor, orders: list[torch.Tensor], batch_size: int, loss_of, *,
               lr: float, momentum: float, weight_decay: float, clip: float | None = None,
               lr_at=None) -> torch.Tensor:
    """torch.optim.SGD over the given epoch orders, the batch loss from ``loss_of(theta, idx)`` by autograd."""
    theta = torch.nn.Parameter(theta0.clone())
    opt = torch.optim.SGD([theta], lr=lr, momentum=momentum, weight_decay=weight_decay)
    step = 0
    for order in orders:
        for idx in order.split(batch_size):
            if lr_at is not None:
                opt.param_groups[0]["lr"] = lr_at(step)
            opt.zero_grad()
            loss_of(theta, idx).backward()
            if clip is not None:
                # the loss gradient alone: SGD adds weight decay inside step()
                torch.nn.utils.clip_grad_norm_([theta], clip)
            opt.step()
            step += 1
    return theta.detach()


def _replay(orders: list[torch.Tensor]):
    it = iter(orders)
    return lambda: next(it)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_cross_entropy_matches_autograd(weighted, schedule):
    p = _problem(1)
    ha = augment(p["h"])
    w = p["w"] if weighted else None
    orders = _orders(3, 7)
    bs, lr = 8, 0.3
    steps = math.ceil(N / bs)
    ours = train_head(p["theta"].clone(), CrossEntropy(ha, p["y"], C, w), _replay(orders), epochs=3, batch_size=bs,
                      lr=lr, momentum=0.9, weight_decay=1e-2, schedule=schedule, steps_per_epoch=steps)

    def loss_of(theta, idx):
        ce = torch.nn.functional.cross_entropy(ha[idx] @ theta.T, p["y"][idx], reduction="none")
        return ce.mean() if w is None else (w[idx] * ce).sum() / w[idx].sum()

    total = 3 * steps
    sched = {"constant": lambda s: lr, "cosine": lambda s: lr * 0.5 * (1 + math.cos(math.pi * s / total)),
             "linear": lambda s: lr * (1 - s / total)}[schedule]
    ref = _reference(p["theta"], ha, orders, bs, loss_of, lr=lr, momentum=0.9, weight_decay=1e-2, lr_at=sched)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_group_dro_matches_autograd():
    p = _problem(2)
    ha = augment(p["h"])
    counts = torch.bincount(p["g"], minlength=G).to(torch.float64)
    bonus = 1.5 / counts.sqrt()
    eta = 0.2
    orders = _orders(4, 3)
    obj = GroupDROObjective(ha, p["y"], C, p["g"], G, bonus, eta)
    ours = train_head(p["theta"].clone(), obj, _replay(orders), epochs=4, batch_size=6, lr=0.2, momentum=0.5,
                      weight_decay=1e-3)
    q = torch.full((G,), 1.0 / G, dtype=torch.float64)

    def loss_of(theta, idx):
        nonlocal q
        ce = torch.nn.functional.cross_entropy(ha[idx] @ theta.T, p["y"][idx], reduction="none")
        gb = p["g"][idx]
        losses = torch.stack([ce[gb == k].mean() if (gb == k).any() else ce.sum() * 0 for k in range(G)])
        q = q * torch.exp(eta * (losses.detach() + bonus))
        q = q / q.sum()
        return (q * losses).sum()

    ref = _reference(p["theta"], ha, orders, 6, loss_of, lr=0.2, momentum=0.5, weight_decay=1e-3)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(obj.q, q, rtol=1e-9, atol=1e-12)


def test_logit_adjusted_matches_autograd():
    p = _problem(3)
    ha = augment(p["h"])
    tau, beta = 0.7, 0.8
    orders = _orders(3, 4)
    obj = LogitAdjusted(ha, p["y"], C, p["b"], C, tau, beta)
    ours = train_head(p["theta"].clone(), obj, _replay(orders), epochs=3, batch_size=9, lr=0.1, momentum=0.9,
                      weight_decay=1e-2)
    ema = torch.zeros(C, C, dtype=torch.float64)
    t = 0

    def loss_of(theta, idx):
        nonlocal ema, t
        yb, bb = p["y"][idx], p["b"][idx]
        counts = torch.zeros(C, C, dtype=torch.float64)
        for bi, yi in zip(bb.tolist(), yb.tolist(), strict=True):  # a slow hand count
            counts[bi, yi] += 1.0
        ema = beta * ema + (1 - beta) * counts / len(idx)
        t += 1
        joint = ema / (1 - beta ** t)
        cond = joint / joint.sum(1, keepdim=True).clamp_min(1e-300)
        offsets = tau * torch.log(cond.clamp_min(1e-8))[bb]
        return torch.nn.functional.cross_entropy(ha[idx] @ theta.T + offsets, yb)

    ref = _reference(p["theta"], ha, orders, 9, loss_of, lr=0.1, momentum=0.9, weight_decay=1e-2)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(obj.joint(), ema / (1 - beta ** t))


def test_logit_adjusted_soft_matches_the_authors_update():
    """The authors' estimator: joint from soft bias probabilities, moving average started at batch one."""
    p = _problem(5)
    ha = augment(p["h"])
    gen = torch.Generator().manual_seed(11)
    q = torch.softmax(torch.randn(N, C, generator=gen, dtype=torch.float64) * 2, dim=1)  # bias probabilities
    bias_pred = q.argmax(1)
    tau, beta = 1.0, 0.9
    orders = _orders(3, 6)
    obj = LogitAdjusted(ha, p["y"], C, bias_pred, C, tau, beta, bias_prob=q)
    ours = train_head(p["theta"].clone(), obj, _replay(orders), epochs=3, batch_size=8, lr=0.1, momentum=0.9,
                      weight_decay=1e-3)
    ema: list[list[float]] | None = None

    def loss_of(theta, idx):
        nonlocal ema
        yb = p["y"][idx].tolist()
        conf = [[0.0] * C for _ in range(C)]  # confusion of (bias class, label), one row at a time
        for r, yi in zip(idx.tolist(), yb, strict=True):
            for bc in range(C):
                conf[bc][yi] += float(q[r, bc]) / len(yb)
        if ema is None:  # the moving average takes the first value as it is
            ema = conf
        else:
            ema = [[beta * ema[i][j] + (1 - beta) * conf[i][j] for j in range(C)] for i in range(C)]
        prior = [[max(ema[i][j] / sum(ema[i]), 1e-8) for j in range(C)] for i in range(C)]
        offsets = tau * torch.log(torch.tensor(prior, dtype=torch.float64))[bias_pred[idx]]
        return torch.nn.functional.cross_entropy(ha[idx] @ theta.T + offsets, p["y"][idx])

    ref = _reference(p["theta"], ha, orders, 8, loss_of, lr=0.1, momentum=0.9, weight_decay=1e-3)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(obj.joint(), torch.tensor(ema, dtype=torch.float64), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("clip", [None, 0.5])
def test_afr_matches_autograd(clip):
    p = _problem(4)
    ha = augment(p["h"])
    w = p["w"] / p["w"].sum()
    theta0 = p["theta"]
    lam = 0.3
    obj = AFRObjective(ha, p["y"], C, w, theta0, lam)
    ours = train_head(theta0.clone(), obj, full_batch_sampler(), epochs=12, batch_size=N, lr=0.5, momentum=0.3,
                      grad_clip=clip)

    def loss_of(theta, idx):
        ce = torch.nn.functional.cross_entropy(ha[idx] @ theta.T, p["y"][idx], reduction="none")
        return (w[idx] * ce).sum() + lam * ((theta - theta0) ** 2).sum()

    ref = _reference(theta0, ha, [torch.arange(N)] * 12, N, loss_of, lr=0.5, momentum=0.3, weight_decay=0.0,
                     clip=clip)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-10)
    assert len(obj.values) == 12
    z = ha @ theta0.T
    first = float((w * torch.nn.functional.cross_entropy(z, p["y"], reduction="none")).sum())
    assert obj.values[0] == pytest.approx(first, rel=1e-12)


def test_samplers_draw_from_the_callers_generator():
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    perm = permutation_sampler(N, gen_a)()
    assert torch.equal(perm, torch.randperm(N, generator=gen_b))
    assert sorted(perm.tolist()) == list(range(N))
    weights = torch.zeros(N, dtype=torch.float64)
    weights[[3, 9]] = 1.0
    draws = weighted_sampler(weights, torch.Generator().manual_seed(0), 500)()
    assert draws.shape == (500,) and set(draws.tolist()) == {3, 9}


def test_decaying_schedule_needs_its_length():
    p = _problem(5)
    with pytest.raises(GradTuneInputError, match="steps_per_epoch"):
        train_head(p["theta"].clone(), CrossEntropy(augment(p["h"]), p["y"], C), full_batch_sampler(), epochs=1,
                   batch_size=N, lr=0.1, schedule="cosine")
